"""Where each config key flows, so that a key given as a secret keeps everything it reaches secret.

Pulumi marks secrets per top-level key (`pulumi config set --secret --path job.env.TOKEN`
makes all of `mlcache:job` secret; the engine tells a program no finer). Whatever such a key
flows into, the engine must receive as a secret: the inputs of each Kubernetes object it
reaches (all but apiVersion and kind) and each stack output derived from it. The engine then
keeps them encrypted in state and shows them as [secret] in previews; `mlcache render` shows
them as <redacted>. The tables below say what reaches what; tests/test_secrets.py proves them
against the program (a distinctive secret value for each key appears in no request outside a
secret envelope).
"""

from __future__ import annotations

from typing import Any

import pulumi

from mlcache.program.outputs import OUTPUT_INPUTS

# Kubernetes kind -> the config keys its inputs are built from.
OBJECT_INPUTS: dict[str, frozenset[str]] = {
    "StorageClass": frozenset({"linstor"}),
    "PersistentVolumeClaim": frozenset({"cache", "namespace", "backend", "zone", "linstor", "rookCeph"}),
    "ConfigMap": frozenset({"cache", "namespace"}),
    # A move's copy objects are named after cache.name.
    "NetworkPolicy": frozenset({"cache", "namespace"}),
    # Its payload (hub tokens, secretEnv values, a move's token) is secret already.
    "Secret": frozenset({"job", "cache", "namespace"}),
    "Job": frozenset({"job", "cache", "zone", "namespace", "benchmark", "backend"}),
    # Multi-node runs only (job.nodes > 1): named and labelled from the run.
    "JobSet": frozenset({"job", "cache", "zone", "namespace"}),
    "Service": frozenset({"job", "cache", "namespace"}),
    "ServiceAccount": frozenset({"job", "namespace"}),
    "Role": frozenset({"job", "namespace"}),
    "RoleBinding": frozenset({"job", "namespace"}),
}
# Never secret: they say what an object is, and the engine needs them in the clear.
_OBJECT_TYPE_FIELDS = ("api_version", "kind")


class SecretFlow:
    """The keys given as secrets, and what they make secret."""

    def __init__(self, secret_keys: frozenset[str]):
        self.secret_keys = secret_keys
        if "job" in secret_keys:
            # Pulumi marks a whole top-level key secret, so the whole Job is hidden from every preview.
            pulumi.log.warn(
                "mlcache:job holds a secret value, so the whole training Job is hidden in previews; put secret "
                "environment variables in mlcache:secretEnv (pulumi config set --secret --path mlcache:secretEnv.NAME "
                "VALUE) and the Job stays readable"
            )
        if any(self.secret_keys & keys for keys in OBJECT_INPUTS.values()):
            pulumi.runtime.register_stack_transformation(self._mark_object)

    def _mark_object(self, args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        props = args.props if isinstance(args.props, dict) else None
        if not props or not self.secret_keys & OBJECT_INPUTS.get(props.get("kind", ""), frozenset()):
            return None
        marked = {
            key: value if key in _OBJECT_TYPE_FIELDS or value is None else pulumi.Output.secret(value)
            for key, value in props.items()
        }
        return pulumi.ResourceTransformationResult(marked, args.opts)

    def export(self, name: str, value: Any) -> None:
        """pulumi.export, secret when a secret key flows into the output."""
        pulumi.export(name, pulumi.Output.secret(value) if self.secret_keys & OUTPUT_INPUTS[name] else value)
