"""Model-hub tokens (Hugging Face, ModelScope) as a Kubernetes Secret the Job reads by reference."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.common import metadata
from mlcache.program.components.security import checkov_skips, namespace_skip


def secret_env(secret_name: pulumi.Input[str], keys: list[str]) -> list[dict]:
    """Container env entries that read each token from the Secret (never a plain value)."""
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}} for key in sorted(keys)]


class HubCredentials(pulumi.ComponentResource):
    """An Opaque Secret holding the hub tokens; its payload stays a Pulumi secret end to end."""

    def __init__(
        self,
        name: str,
        tokens: dict[str, pulumi.Output[str]],
        *,
        secret_name: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:HubCredentials", name, None, opts)
        # Typed: mypy cannot infer Output.secret's type from an Output argument alone.
        string_data: dict[str, pulumi.Output[str]] = {key: pulumi.Output.secret(value) for key, value in tokens.items()}
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=metadata(secret_name, namespace, annotations=checkov_skips(namespace_skip(namespace)) or None),
            type="Opaque",
            string_data=string_data,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"]),
        )
        self.keys = sorted(tokens)
        self.secret_name = self.secret.metadata.name
        self.register_outputs({"secret_name": self.secret_name})
