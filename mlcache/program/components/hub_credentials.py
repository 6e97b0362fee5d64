"""Secret values the training container reads from its environment, each as a Kubernetes Secret the
Job references by secretKeyRef: the model-hub tokens (HubCredentials) and `secretEnv` (SecretEnv).
The values stay Pulumi secrets end to end; the Job, which holds only the references, stays
readable in every preview."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.common import metadata
from mlcache.program.components.security import checkov_skips, namespace_skip


def secret_env(secret_name: pulumi.Input[str], keys: list[str]) -> list[dict]:
    """Container env entries that read each token from the Secret (never a plain value)."""
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}} for key in sorted(keys)]


def opaque_secret(
    name: str, parent: pulumi.Resource, values: dict[str, pulumi.Output[str]], secret_name: str, namespace: str | None
) -> k8s.core.v1.Secret:
    """An Opaque Secret of `values` whose payload stays a Pulumi secret."""
    # Typed: mypy cannot infer Output.secret's type from an Output argument alone.
    string_data: dict[str, pulumi.Output[str]] = {key: pulumi.Output.secret(value) for key, value in values.items()}
    return k8s.core.v1.Secret(
        f"{name}-secret",
        metadata=metadata(secret_name, namespace, annotations=checkov_skips(namespace_skip(namespace)) or None),
        type="Opaque",
        string_data=string_data,
        opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["data", "stringData"]),
    )


class HubCredentials(pulumi.ComponentResource):
    """An Opaque Secret holding the hub tokens."""

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
        self.secret = opaque_secret(name, self, tokens, secret_name, namespace)
        self.keys = sorted(tokens)
        self.secret_name = self.secret.metadata.name
        self.register_outputs({"secret_name": self.secret_name})


class SecretEnv(pulumi.ComponentResource):
    """An Opaque Secret holding the `secretEnv` values (W&B keys, registry tokens): the training
    container reads each by name; the names and the rest of the Job are not secret."""

    def __init__(
        self,
        name: str,
        values: dict[str, pulumi.Output[str]],
        *,
        secret_name: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:SecretEnv", name, None, opts)
        self.secret = opaque_secret(name, self, values, secret_name, namespace)
        self.keys = sorted(values)
        self.secret_name = self.secret.metadata.name
        self.register_outputs({"secret_name": self.secret_name})


def secret_env_entries(*secrets: HubCredentials | SecretEnv | None) -> list[dict]:
    """The container env entries that read every value of these Secrets by reference."""
    return [entry for secret in secrets if secret is not None for entry in secret_env(secret.secret_name, secret.keys)]
