"""A move's copy (cache.relocate copy): the pods that carry the cache from its old claim into the
new one and verify it, with workloads/cache_copy.py (docs/moving-the-cache.md).

Two ways, chosen by where the volumes can be attached (bound_cache.copy_mode):

- local: one pod mounts both claims and copies at disk speed. Placed like training when the old
  volume attaches anywhere (Rook-Ceph, the runbook's migration: the new LINSTOR claim then binds
  where training will land); pinned to the old volume's node when the new one attaches anywhere
  (the rollback to Rook-Ceph).
- stream: a sender pinned to the old volume's node (read-only mount) serves it to a receiver placed
  exactly like training (so WaitForFirstConsumer binds the new volume where training will run),
  over the pod network: parallel streams, a per-move token from a Secret, and a NetworkPolicy that
  lets only the receiver reach the sender's port.

Every copy pod is a cache pod (components/cache_pod.py: hardening, labels, the Job around it),
labelled app.kubernetes.io/component: cache-copy, and runs the training image. The copy Job (the
receiver's, or the local pod's) completes only once the copy is verified; that is what the next
`pulumi up` reads to switch training to the new claim.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.cluster.bound_cache import LOCAL, Move
from mlcache.program.components.cache_pod import CachePod, container, held_spec, job_manifest, pod_spec, scripts_mount
from mlcache.program.components.common import constructor_kwargs, metadata
from mlcache.program.components.placement import node_pinning
from mlcache.program.components.security import checkov_skips, namespace_skip, scratch_mount
from mlcache.program.components.workload_scripts import COPY_SCRIPT, WORKLOADS
from mlcache.program.names import (
    COPY_ATTEMPT_ANNOTATION,
    COPY_COMPONENT_LABEL,
    COPY_INTO_UID_ANNOTATION,
    COPY_LABEL,
    COPY_PORT,
    COPY_ROLE_LABEL,
    COPY_SOURCE_PATH,
    COPY_TOKEN_PATH,
    SCRIPTS_PATH,
    SKIP_AWAIT,
    copy_name,
)

TOKEN_KEY = "token"
STREAMS = 4
# A copy that fails is retried by its Job; each retry resumes (what landed and verifies is kept).
BACKOFF_LIMIT = 3
# The pods beside the old volume hold no GPU: they read and hash, at disk speed.
NODE_SIDE_RESOURCES = {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
SOURCE_VOLUME = "source"
TOKEN_VOLUME = "token"
SENDER, RECEIVER, LOCAL_ROLE = "sender", "receiver", "local"


def pod_labels(name: str, role: str) -> dict[str, str]:
    return {COPY_ROLE_LABEL: role, COPY_LABEL: name}


def script_manifest(name: str, namespace: str | None) -> dict[str, Any]:
    annotations = checkov_skips(namespace_skip(namespace)) or None
    data = {COPY_SCRIPT: (WORKLOADS / COPY_SCRIPT).read_text()}
    return {"metadata": metadata(f"{name}-script", namespace, annotations=annotations), "data": data}


def token_manifest(name: str, namespace: str | None, token: pulumi.Input[str]) -> dict[str, Any]:
    annotations = checkov_skips(namespace_skip(namespace)) or None
    return {
        "metadata": metadata(f"{name}-token", namespace, annotations=annotations),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def service_manifest(name: str, namespace: str | None) -> dict[str, Any]:
    """The receiver's way to the sender: a stable name for the sender pod's port. skipAwait: the
    sender may wait for its node, and `up` must not wait with it."""
    return {
        "metadata": metadata(name, namespace, annotations=SKIP_AWAIT),
        "spec": {
            "selector": {**COPY_COMPONENT_LABEL, **pod_labels(name, SENDER)},
            "ports": [{"name": "copy", "port": COPY_PORT, "targetPort": COPY_PORT, "protocol": "TCP"}],
        },
    }


def policy_manifest(name: str, namespace: str | None) -> dict[str, Any]:
    """Only this move's receiver may reach the sender's port (every cache pod denies ingress otherwise)."""
    return {
        "metadata": metadata(name, namespace),
        "spec": {
            "podSelector": {"matchLabels": {**COPY_COMPONENT_LABEL, **pod_labels(name, SENDER)}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {**COPY_COMPONENT_LABEL, **pod_labels(name, RECEIVER)}}}],
                    "ports": [{"protocol": "TCP", "port": COPY_PORT}],
                }
            ],
        },
    }


def copy_script(*args: str) -> list[str]:
    return ["python3", f"{SCRIPTS_PATH}/{COPY_SCRIPT}", *args]


def _token_volume(name: str) -> dict[str, Any]:
    # Group-readable: the pods run as job.runAsUser with that fsGroup.
    return {"name": TOKEN_VOLUME, "secret": {"secretName": f"{name}-token", "defaultMode": 0o440}}


def _token_mount() -> dict[str, Any]:
    return {"name": TOKEN_VOLUME, "mountPath": COPY_TOKEN_PATH, "readOnly": True}


def _stream_end(pod: CachePod, role: str, args: list[str], **options: Any) -> dict[str, Any]:
    """The sender's or the receiver's container: the script, with the move's token."""
    command = copy_script(*args, "--token-file", f"{COPY_TOKEN_PATH}/{TOKEN_KEY}")
    mounts = [scripts_mount(), _token_mount(), scratch_mount()]
    return container(pod, role, pod.job.image, command, mounts=mounts, **options)


def _copy_job(
    pod: CachePod, name: str, role: str, spec: dict[str, Any], move: Move, into_uid: pulumi.Input[str]
) -> dict[str, Any]:
    """Both Jobs of a copy carry its attempt and the UID of the claim it fills: either changing
    re-makes both (the sender serves one receiver, then exits)."""
    return job_manifest(
        pod,
        f"{name}-send" if role == SENDER else name,
        spec,
        app_label=COPY_COMPONENT_LABEL,
        backoff_limit=BACKOFF_LIMIT,
        pod_labels=pod_labels(name, role),
        pod_annotations={COPY_ATTEMPT_ANNOTATION: str(move.attempt), COPY_INTO_UID_ANNOTATION: into_uid},
    )


def sender_job_manifest(source: CachePod, name: str, move: Move, into_uid: pulumi.Input[str]) -> dict[str, Any]:
    """Beside the old volume, read-only: serves it to one receiver, then exits."""
    args = ["send", "--root", source.cache.mount_path, "--listen", f"0.0.0.0:{COPY_PORT}"]
    step = _stream_end(source, SENDER, args, resources=NODE_SIDE_RESOURCES, read_only=True)
    step["ports"] = [{"name": "copy", "containerPort": COPY_PORT, "protocol": "TCP"}]
    spec = pod_spec(source, [step], volumes=[_token_volume(name)], scheduling=node_pinning(source.job, move.source.nodes))
    return _copy_job(source, name, SENDER, spec, move, into_uid)


def receiver_job_manifest(target: CachePod, name: str, move: Move, into_uid: pulumi.Input[str]) -> dict[str, Any]:
    """Placed exactly like training, so the new claim binds where training will run; completes only verified."""
    args = ["receive", "--root", target.cache.mount_path, "--source", f"{name}:{COPY_PORT}", "--streams", str(STREAMS)]
    step = _stream_end(target, RECEIVER, args)
    spec = pod_spec(target, [step], volumes=[_token_volume(name)])
    return _copy_job(target, name, RECEIVER, spec, move, into_uid)


def local_job_manifest(
    target: CachePod, source_claim: pulumi.Input[str], name: str, move: Move, into_uid: pulumi.Input[str]
) -> dict[str, Any]:
    """One pod with both claims: placed like training when the old volume attaches anywhere, else
    beside the old volume (the new one then attaches anywhere)."""
    beside_source = move.source.pinned
    source_mount = {"name": SOURCE_VOLUME, "mountPath": COPY_SOURCE_PATH, "readOnly": True}
    step = container(
        target,
        LOCAL_ROLE,
        target.job.image,
        copy_script("local", "--from", COPY_SOURCE_PATH, "--to", target.cache.mount_path, "--streams", str(STREAMS)),
        mounts=[source_mount, scripts_mount(), scratch_mount()],
        resources=NODE_SIDE_RESOURCES if beside_source else None,
    )
    source_volume = {"name": SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True}}
    scheduling = node_pinning(target.job, move.source.nodes) if beside_source else None
    spec = pod_spec(target, [step], volumes=[source_volume], scheduling=scheduling)
    return _copy_job(target, name, LOCAL_ROLE, spec, move, into_uid)


class CacheCopy(pulumi.ComponentResource):
    """The copy of a move into the new claim (`target` mounts it): its script, and the local pod or
    the sender, receiver, Service, NetworkPolicy and token. Its Job completes only verified."""

    def __init__(
        self,
        name: str,
        move: Move,
        *,
        target: CachePod,
        source_claim: pulumi.Input[str],
        into_uid: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:CacheCopy", name, None, opts)
        namespace, copy = target.namespace, copy_name(target.cache.name, move.generation)
        child = pulumi.ResourceOptions(parent=self)
        script = k8s.core.v1.ConfigMap(f"{name}-script", opts=child, **constructor_kwargs(script_manifest(copy, namespace)))
        target = replace(target, scripts=script.metadata.name)
        # The claim the guard read, once it exists: one made again by hand since (a new UID) is
        # copied into again, whether or not the engine's state has seen it.
        into_uid = move.into_uid or into_uid
        # The copy Jobs are replaced as a whole, never patched: when a failed copy is retried (a new
        # attempt), or when the settings change while no copy pod is at work (pending, or its image
        # not pulled: the change may be the fix). Once a copy pod works, and after the copy is
        # verified, they stay exactly as the cluster has them: a settings change during the move
        # (job.image, job.gpus) would replace a running copy, or re-run a verified one whose
        # receiver then waits for the GPUs training holds.
        jobs = pulumi.ResourceOptions(parent=self, delete_before_replace=True, ignore_changes=held_spec(move.copy_busy))
        if move.mode == LOCAL:
            manifest = local_job_manifest(target, source_claim, copy, move, into_uid)
        else:
            # A token per move, made once: later ups keep the one the pods already read.
            token = k8s.core.v1.Secret(
                f"{name}-token",
                opts=pulumi.ResourceOptions(
                    parent=self, additional_secret_outputs=["data", "stringData"], ignore_changes=["stringData", "data"]
                ),
                **constructor_kwargs(token_manifest(copy, namespace, pulumi.Output.secret(secrets.token_urlsafe(32)))),
            )
            k8s.networking.v1.NetworkPolicy(f"{name}-policy", opts=child, **constructor_kwargs(policy_manifest(copy, namespace)))
            k8s.core.v1.Service(f"{name}-service", opts=child, **constructor_kwargs(service_manifest(copy, namespace)))
            jobs = pulumi.ResourceOptions.merge(jobs, pulumi.ResourceOptions(depends_on=[token]))
            sender = sender_job_manifest(replace(target, claim_name=source_claim), copy, move, into_uid)
            k8s.batch.v1.Job(f"{name}-sender", opts=jobs, **constructor_kwargs(sender))
            manifest = receiver_job_manifest(target, copy, move, into_uid)
        self.job = k8s.batch.v1.Job(f"{name}-job", opts=jobs, **constructor_kwargs(manifest))
        self.job_name = self.job.metadata.name
        self.register_outputs({"job_name": self.job_name})


def move_output(move: Move | None, cache_name: str, target_claim: pulumi.Input[str]) -> dict[str, Any] | None:
    """The `cacheMove` stack output, read by `mlcache verify`: None when no move is under way."""
    if move is None:
        return None
    return {
        "state": move.state,
        "from": move.source.name,
        "to": target_claim,
        "copyJob": copy_name(cache_name, move.generation),
        "mode": move.mode,
        "attempt": move.attempt,
        "oldKept": move.keeps_source,
    }
