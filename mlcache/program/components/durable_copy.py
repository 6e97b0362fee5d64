"""The durable copy (cache.durableCopy): a second, replicated copy of the cached models on the
Rook-Ceph class, for recovery after node loss (docs/moving-the-cache.md#node-loss-the-durable-copy).

The fast single-replica LINSTOR volume stays what training reads. Beside it:

- the durable claim, `<cache.name>-durable`, on rookCeph.storageClassName (it attaches anywhere);
- the refresh Job, `<cache.name>-durable-refresh`: a copy pod pinned to the cache volume's node
  (registered once the guard has read the claim bound), the cache mounted read-only. It waits
  until the warm-up has finished the current prefetch list, then makes the durable copy a verified
  copy of the models the warm-up's markers name, and records them with the markers
  (workloads/cache_copy.py refresh). A new prefetch list is a new warm-up: the Job is replaced and
  copies again (what is there is kept; the last record stays valid until a model it lists changes);
- the training pod's first step, `restore`: into a cache that is not warm (a claim re-created
  after node loss), it copies the durable copy back at disk speed, verified, so the warm-up that
  follows finds every model it lists present and downloads nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.cache_copy import BACKOFF_LIMIT, copy_script
from mlcache.program.components.cache_pod import CachePod, container, job_manifest, pod_spec, scripts_mount
from mlcache.program.components.common import constructor_kwargs, metadata
from mlcache.program.components.placement import node_pinning
from mlcache.program.components.security import scratch_mount
from mlcache.program.components.workload_scripts import COPY_SCRIPT, WORKLOADS, prefetch_list, prefetch_markers
from mlcache.program.names import (
    BACKEND_ANNOTATION,
    COPY_COMPONENT_LABEL,
    COPY_LABEL,
    COPY_ROLE_LABEL,
    COPY_SCRIPT_ANNOTATION,
    DURABLE_PATH,
    DURABLE_ROLE,
    WARMUP_ANNOTATION,
    durable_claim_name,
    durable_refresh_name,
)
from mlcache.program.settings import CacheSettings
from workloads.cache_copy import EXIT_WAITED
from workloads.prefetch import WARMUP_DONE, warmup_id

DURABLE_VOLUME = "durable"
RESTORE_CONTAINER = "restore"
# Waiting for the warm-up beside training, it must never keep training off its node: it asks for
# little and may use more while it copies.
# A warm-up that has not finished in a day (training not started, the list changed and no pod ran
# it): the refresh fails with a line saying so instead of holding its requests on the node for ever.
REFRESH_WAIT_LIMIT = 86400
# ... once: a retry would only wait another day.
WAITED_TOO_LONG = {
    "rules": [{"action": "FailJob", "onExitCodes": {"containerName": DURABLE_ROLE, "operator": "In", "values": [EXIT_WAITED]}}]
}
REFRESH_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}


def warmup_marker(cache: CacheSettings) -> str:
    return f"{prefetch_markers(cache)}/{WARMUP_DONE}"


def script_hash() -> str:
    return hashlib.sha256((WORKLOADS / COPY_SCRIPT).read_bytes()).hexdigest()[:12]


def warmup(cache: CacheSettings) -> str:
    """The warm-up the refresh follows: the prefetch list's, as prefetch.py names it."""
    return warmup_id(prefetch_list(cache))


def _copy_args(cache: CacheSettings) -> list[str]:
    return ["--cache", cache.mount_path, "--durable", DURABLE_PATH, "--ready", warmup_marker(cache)]


def durable_volume(claim: pulumi.Input[str], *, read_only: bool) -> dict[str, Any]:
    return {"name": DURABLE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def durable_mount(*, read_only: bool) -> dict[str, Any]:
    return {"name": DURABLE_VOLUME, "mountPath": DURABLE_PATH, "readOnly": read_only}


def restore_container(pod: CachePod) -> dict[str, Any]:
    """The training pod's first step: the durable copy into a cache that is not warm, else nothing."""
    command = copy_script("restore", *_copy_args(pod.cache))
    return container(
        pod, RESTORE_CONTAINER, pod.job.image, command, mounts=[durable_mount(read_only=True), scripts_mount(), scratch_mount()]
    )


def durable_claim_manifest(cache: CacheSettings, storage_class_name: str, size: str, namespace: str | None) -> dict[str, Any]:
    return {
        "metadata": metadata(durable_claim_name(cache.name), namespace, annotations={BACKEND_ANNOTATION: "rook-ceph"}),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class_name,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": size}},
        },
    }


def refresh_job_manifest(pod: CachePod, nodes: tuple[str, ...]) -> dict[str, Any]:
    """Beside the cache volume (its node(s) `nodes`), the cache read-only: after the warm-up, the
    cache's models into the durable copy, verified."""
    assert pod.durable_claim is not None, "a refresh needs the durable claim"
    name, current = durable_refresh_name(pod.cache.name), warmup(pod.cache)
    command = copy_script("refresh", *_copy_args(pod.cache), "--warmup", current, "--wait-limit", str(REFRESH_WAIT_LIMIT))
    mounts = [durable_mount(read_only=False), scripts_mount(), scratch_mount()]
    step = container(pod, DURABLE_ROLE, pod.job.image, command, mounts=mounts, resources=REFRESH_RESOURCES, read_only=True)
    volumes = [durable_volume(pod.durable_claim, read_only=False)]
    spec = pod_spec(pod, [step], volumes=volumes, scheduling=node_pinning(pod.job, nodes))
    return job_manifest(
        pod,
        name,
        spec,
        app_label=COPY_COMPONENT_LABEL,
        backoff_limit=BACKOFF_LIMIT,
        pod_labels={COPY_ROLE_LABEL: DURABLE_ROLE, COPY_LABEL: name},
        pod_annotations={WARMUP_ANNOTATION: current, COPY_SCRIPT_ANNOTATION: script_hash()},
        pod_failure_policy=WAITED_TOO_LONG,
    )


class DurableClaim(pulumi.ComponentResource):
    """The durable copy's claim on the replicated class, at `size` (cache.size, or more when the live
    claim is larger: it cannot shrink); `name` is its output."""

    def __init__(
        self,
        name: str,
        cache: CacheSettings,
        *,
        storage_class_name: str,
        size: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:DurableClaim", name, None, opts)
        manifest = durable_claim_manifest(cache, storage_class_name, size, namespace)
        options = pulumi.ResourceOptions(parent=self, protect=cache.protect)
        self.claim = k8s.core.v1.PersistentVolumeClaim(f"{name}-pvc", opts=options, **constructor_kwargs(manifest))
        self.name = self.claim.metadata.name
        self.register_outputs({"name": self.name})


class DurableRefresh(pulumi.ComponentResource):
    """The Job that refreshes the durable copy from the cache on its node(s) `nodes`."""

    def __init__(self, name: str, pod: CachePod, *, nodes: tuple[str, ...], opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlcache:index:DurableRefresh", name, None, opts)
        # Replaced as a whole (a new warm-up, a new claim), never patched.
        options = pulumi.ResourceOptions(parent=self, delete_before_replace=True)
        self.job = k8s.batch.v1.Job(f"{name}-job", opts=options, **constructor_kwargs(refresh_job_manifest(pod, nodes)))
        self.name = self.job.metadata.name
        self.register_outputs({"name": self.name})


def durable_output(claim: DurableClaim | None, cache: CacheSettings) -> dict[str, Any] | None:
    """The `durableCopy` stack output, read by verify and heal: None without a durable copy."""
    if claim is None:
        return None
    return {"claim": claim.name, "refreshJob": durable_refresh_name(cache.name), "warmup": warmup(cache)}
