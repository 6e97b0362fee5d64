"""Deny all ingress to the pods that mount the cache: nothing needs to connect to them."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.common import constructor_kwargs, metadata
from mlcache.program.components.security import checkov_skips, namespace_skip
from mlcache.program.names import POD_LABELS


def network_policy_manifest(name: str, namespace: str | None) -> dict[str, Any]:
    # Ingress only, and no rule: no pod or address may connect. Egress stays open for the
    # model hubs, the image registry and DNS.
    annotations = checkov_skips(namespace_skip(namespace)) or None
    return {
        "metadata": metadata(name, namespace, annotations=annotations),
        "spec": {"podSelector": {"matchLabels": dict(POD_LABELS)}, "policyTypes": ["Ingress"]},
    }


class IngressIsolation(pulumi.ComponentResource):
    """A NetworkPolicy that isolates the cache's pods from inbound traffic."""

    def __init__(self, name: str, *, policy_name: str, namespace: str | None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlcache:index:IngressIsolation", name, None, opts)
        self.policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-policy",
            opts=pulumi.ResourceOptions(parent=self),
            **constructor_kwargs(network_policy_manifest(policy_name, namespace)),
        )
        self.name = self.policy.metadata.name
        self.register_outputs({"name": self.name})
