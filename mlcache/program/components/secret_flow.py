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

from mlcache.program.names import PLACEMENT_ANNOTATION
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
# Single annotations built from keys their object is not otherwise built from: that value is kept
# secret, and with it (the SDK marks the nearest input) the object's metadata; its spec stays
# readable. Kind -> annotation -> the keys its value comes from.
ANNOTATION_INPUTS: dict[str, dict[str, frozenset[str]]] = {
    # The placement record names job.gpuProduct (names.PLACEMENT_ANNOTATION).
    "PersistentVolumeClaim": {PLACEMENT_ANNOTATION: frozenset({"job"})},
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
                "mlcache:job holds a secret value, so the whole training Job (and the cache claim's metadata, whose "
                "placement record names job.gpuProduct) is hidden in previews; put secret "
                "environment variables in mlcache:secretEnv (pulumi config set --secret --path mlcache:secretEnv.NAME "
                "VALUE) and the Job stays readable"
            )
        for key in sorted(secret_keys - {"job"}):
            if kinds := [kind for kind, keys in OBJECT_INPUTS.items() if key in keys]:
                pulumi.log.warn(
                    f"mlcache:{key} holds a secret value, so every object it flows into is hidden whole in previews "
                    f"(of the kinds {', '.join(kinds)}); keep secrets out of it (secret environment variables go "
                    "in mlcache:secretEnv) and those objects stay readable"
                )
        flows = [*OBJECT_INPUTS.values(), *(keys for fields in ANNOTATION_INPUTS.values() for keys in fields.values())]
        if any(self.secret_keys & keys for keys in flows):
            pulumi.runtime.register_stack_transformation(self._mark_object)

    def _mark_object(self, args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        props = args.props if isinstance(args.props, dict) else None
        if not props:
            return None
        kind = props.get("kind", "")
        if not self.secret_keys & OBJECT_INPUTS.get(kind, frozenset()):
            return self._mark_annotations(args, props, ANNOTATION_INPUTS.get(kind, {}))
        marked = {
            key: value if key in _OBJECT_TYPE_FIELDS or value is None else pulumi.Output.secret(value)
            for key, value in props.items()
        }
        return pulumi.ResourceTransformationResult(marked, args.opts)

    def _mark_annotations(
        self, args: pulumi.ResourceTransformationArgs, props: dict, inputs: dict[str, frozenset[str]]
    ) -> pulumi.ResourceTransformationResult | None:
        annotations = (props.get("metadata") or {}).get("annotations") or {}
        secret = [name for name, keys in inputs.items() if self.secret_keys & keys and name in annotations]
        if not secret:
            return None
        marked = {name: pulumi.Output.secret(value) if name in secret else value for name, value in annotations.items()}
        metadata = {**props["metadata"], "annotations": marked}
        return pulumi.ResourceTransformationResult({**props, "metadata": metadata}, args.opts)

    def export(self, name: str, value: Any) -> None:
        """pulumi.export, secret when a secret key flows into the output."""
        if self.secret_keys & OUTPUT_INPUTS[name]:
            pulumi.export(name, pulumi.Output.secret(value))
        else:
            # No secret key flows into it: secretness the SDK spread from a neighbouring field (a
            # claim's name read from metadata marked for its placement record) is not kept.
            pulumi.export(name, pulumi.Output.unsecret(pulumi.Output.from_input(value)))
