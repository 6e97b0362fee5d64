"""The skeleton of every pod that mounts the cache, decided once.

Training, the warm-up, the storage benchmark, and any later pod on the cache (a heal probe, a
rehearsal probe, one pod per worker of a multi-node run) are built from these functions, so
they share, by construction:

- where they run: the training pod's node affinity, tolerations and priority, and its
  resources (a pod asking for exactly those fits only where training fits, so it cannot
  strand a WaitForFirstConsumer cache on a node training cannot use);
- how they are hardened: non-root UID, read-only root filesystem, no capabilities, no API
  token, a scratch /tmp holding HOME;
- how the cache is attached: mounted at cache.mountPath, or the raw device at
  cache.devicePath in Block mode; the scripts ConfigMap when the pod runs a script;
- the Job around them: labels the ingress NetworkPolicy selects, skipAwait, checkov skips.

Each builder takes a `CachePod` (what the settings say about pods on this cache, and which
claim to mount) and adds only what is particular to its pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from mlcache.program.components.common import metadata
from mlcache.program.components.placement import pod_scheduling, training_resources
from mlcache.program.components.security import (
    SCRATCH_ENV,
    checkov_skips,
    container_security_context,
    image_skips,
    namespace_skip,
    pod_hardening,
    scratch_mount,
    scratch_volume,
)
from mlcache.program.components.workers import Worker
from mlcache.program.names import DELETE_IN_BACKGROUND, POD_LABELS, SCRIPTS_PATH, SKIP_AWAIT
from mlcache.program.settings import CacheSettings, JobSettings, Placement

# Names of the volumes in every pod spec that mounts the cache.
CACHE_VOLUME = "cache"
SCRIPTS_VOLUME = "scripts"


@dataclass(frozen=True)
class CachePod:
    """A pod on the cache: the settings that shape it, and the claim it mounts.

    `claim_name` is the PVC's output (a real dependency: replacing the claim replaces the pod).
    `scripts` is the scripts ConfigMap's name when the pod runs one of its scripts.
    `worker` is the pod's place in a multi-node run (labels, affinities), None on one node.
    `durable_claim` is the durable copy's claim (cache.durableCopy), None without one.
    """

    job: JobSettings
    cache: CacheSettings
    placement: Placement
    namespace: str | None
    claim_name: pulumi.Input[str]
    scripts: pulumi.Input[str] | None = None
    worker: Worker | None = None
    durable_claim: pulumi.Input[str] | None = None


def scripts_mount() -> dict[str, Any]:
    return {"name": SCRIPTS_VOLUME, "mountPath": SCRIPTS_PATH, "readOnly": True}


def container(
    pod: CachePod,
    name: str,
    image: str,
    command: list[str],
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    secret_env: Sequence[dict[str, Any]] = (),
    worker_env: dict[str, str] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    resources: dict[str, Any] | None = None,
    read_only: bool = False,
) -> dict[str, Any]:
    """A container on the cache. Its env: `env`, then `secret_env` (secretKeyRef entries), then
    `worker_env` (a multi-node worker's launch). `mounts` lists the pod's own mounts in order
    (default: the scratch /tmp); the cache comes first (`read_only`: mounted read-only), or as a
    raw device in Block mode. `resources`: the training pod's unless given."""
    env_entries = [{"name": k, "value": v} for k, v in {**SCRATCH_ENV, **(env or {})}.items()]
    env_entries += [*secret_env, *({"name": k, "value": v} for k, v in (worker_env or {}).items())]
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env_entries,
        "resources": resources or training_resources(pod.job),
        "volumeMounts": list(mounts) if mounts is not None else [scratch_mount()],
        "securityContext": container_security_context(pod.job.run_as_user),
    }
    if args is not None:
        spec["args"] = args
    if pod.cache.is_block:
        spec["volumeDevices"] = [{"name": CACHE_VOLUME, "devicePath": pod.cache.device_path}]
    else:
        mount = {"name": CACHE_VOLUME, "mountPath": pod.cache.mount_path}
        spec["volumeMounts"].insert(0, mount | {"readOnly": True} if read_only else mount)
    return spec


def pod_spec(
    pod: CachePod,
    steps: list[dict[str, Any]],
    *,
    volumes: Sequence[dict[str, Any]] = (),
    containers: int = 1,
    scheduling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A run-to-completion pod: `steps` run in order (all but the last `containers` as init
    containers). Volumes: the cache, the pod's own `volumes`, scratch, then the scripts.
    `scheduling`: where it may run, the training pod's placement unless given."""
    spec: dict[str, Any] = {
        # Never: a failed pod is kept for its logs and the Job's backoffLimit decides retries.
        "restartPolicy": "Never",
        **(scheduling if scheduling is not None else pod_scheduling(pod.job, pod.placement)),
        **pod_hardening(pod.job.run_as_user, block=pod.cache.is_block),
        "containers": steps[-containers:],
        "volumes": [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": pod.claim_name}}, *volumes, scratch_volume()],
    }
    if steps[:-containers]:
        spec["initContainers"] = steps[:-containers]
    if pod.scripts is not None:
        spec["volumes"].append({"name": SCRIPTS_VOLUME, "configMap": {"name": pod.scripts}})
    if pod.worker is not None:
        spec["affinity"] = {**spec.get("affinity", {}), **pod.worker.affinity}
    return spec


def held_spec(held: bool) -> list[str] | None:
    """ignore_changes of a Job on the cache that a move holds: its spec stays as the cluster has it
    (a changed pod template would replace the Job, and run it again)."""
    return ["spec"] if held else None


def job_manifest(
    pod: CachePod,
    name: str,
    spec: dict[str, Any],
    *,
    app_label: dict[str, str],
    backoff_limit: int,
    pod_labels: dict[str, str] | None = None,
    job_labels: dict[str, str] | None = None,
    pod_annotations: dict[str, pulumi.Input[str]] | None = None,
    skip_await: bool = True,
    skips: dict[str, str] | None = None,
    pod_failure_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Job around a cache pod. With skipAwait the provider does not wait for Complete (a
    training run would block `pulumi up` for hours, then be recorded as failed to become live).
    `job_labels` are the Job's own; its pods carry `app_label`, `pod_labels` and the worker's."""
    images = sorted({c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]})
    template_labels = {**POD_LABELS, **app_label, **(pod_labels or {}), **(pod.worker.labels if pod.worker else {})}
    annotations = {**SKIP_AWAIT, **DELETE_IN_BACKGROUND} if skip_await else {}
    annotations.update(checkov_skips({**namespace_skip(pod.namespace), **image_skips(*images), **(skips or {})}))
    return {
        "metadata": metadata(name, pod.namespace, labels={**app_label, **(job_labels or {})}, annotations=annotations),
        "spec": {
            "backoffLimit": backoff_limit,
            **({"podFailurePolicy": pod_failure_policy} if pod_failure_policy else {}),
            "template": {
                "metadata": {"labels": template_labels, **({"annotations": pod_annotations} if pod_annotations else {})},
                "spec": spec,
            },
        },
    }
