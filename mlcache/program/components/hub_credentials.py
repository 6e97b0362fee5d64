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


class EnvSecret(pulumi.ComponentResource):
    """An Opaque Secret of values the training container reads by name; its payload stays a Pulumi
    secret. Each kind of secret is a subclass with its own resource type."""

    resource_type = ""

    def __init__(
        self,
        name: str,
        values: dict[str, pulumi.Output[str]],
        *,
        secret_name: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(self.resource_type, name, None, opts)
        # Typed: mypy cannot infer Output.secret's type from an Output argument alone.
        string_data: dict[str, pulumi.Output[str]] = {key: pulumi.Output.secret(value) for key, value in values.items()}
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=metadata(secret_name, namespace, annotations=checkov_skips(namespace_skip(namespace)) or None),
            type="Opaque",
            string_data=string_data,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"]),
        )
        self.keys = sorted(values)
        self.secret_name = self.secret.metadata.name
        self.register_outputs({"secret_name": self.secret_name})


class HubCredentials(EnvSecret):
    """The hub tokens (HF_TOKEN, MODELSCOPE_API_TOKEN)."""

    resource_type = "mlcache:index:HubCredentials"


class SecretEnv(EnvSecret):
    """The `secretEnv` values (W&B keys, registry tokens): the names and the rest of the Job are not secret."""

    resource_type = "mlcache:index:SecretEnv"


def secret_env_entries(*secrets: EnvSecret | None) -> list[dict]:
    """The container env entries that read every value of these Secrets by reference."""
    return [entry for secret in secrets if secret is not None for entry in secret_env(secret.secret_name, secret.keys)]
