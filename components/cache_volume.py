"""The model cache PersistentVolumeClaim (runbook step 3), in Filesystem or Block mode."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.common import adoption_options, constructor_kwargs, metadata
from names import BACKEND_ANNOTATION, IMMUTABLE_FIELDS, SKIP_AWAIT, WORKER_LABEL, ZONE_ANNOTATION, worker_claim_name
from settings import CacheSettings

# Kubernetes makes spec.volumeMode immutable, but the provider does not list it as a
# replacement field and would try (and fail) to patch it in place.
REPLACE_ON_CHANGES = list(IMMUTABLE_FIELDS["PersistentVolumeClaim"])
ROOK_CEPH_WARNING = (
    "backend rook-ceph: the cache volume is bound immediately in Rook-Ceph's pool, not in the zone "
    "where the training pod lands, so reads may cross zones (1-10ms+ latency, limited bandwidth). "
    "This is the runbook's rollback path, not the fast one."
)


def pvc_manifest(
    cache: CacheSettings,
    storage_class_name: str,
    namespace: str | None,
    backend: str,
    zone: str | None,
    worker: int | None = None,
) -> dict[str, Any]:
    """The cache claim; `worker` (multi-node runs only) makes it that worker's own claim."""
    claim_name = cache.name if worker is None else worker_claim_name(cache.name, worker)
    labels = None if worker is None else {WORKER_LABEL: str(worker)}
    annotations = {BACKEND_ANNOTATION: backend}
    if zone:
        annotations[ZONE_ANNOTATION] = zone
    if backend == "linstor":
        # A WaitForFirstConsumer claim stays Pending until the training pod lands: do not let the
        # provider wait for Bound (it only skips that wait itself when it can read the class).
        annotations.update(SKIP_AWAIT)
    return {
        "metadata": metadata(claim_name, namespace, labels=labels, annotations=annotations),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class_name,
            "volumeMode": cache.volume_mode,
            "resources": {"requests": {"storage": cache.size}},
        },
    }


def pvc_options(
    parent: pulumi.Resource,
    cache: CacheSettings,
    storage_class: pulumi.Resource | None,
    namespace: str | None,
    adopt: bool,
) -> pulumi.ResourceOptions:
    """Every cache claim's options (each worker's too): protect, delete-before-replace on a volume
    mode change, and the class as a plain dependency."""
    return pulumi.ResourceOptions(
        **adoption_options(f"{namespace}/{cache.name}", adopt),
        parent=parent,
        # A plain edge, not an output reference: replacing the class must not cascade into
        # replacing (and wiping) the cache.
        depends_on=[storage_class] if storage_class is not None else [],
        protect=cache.protect,
        delete_before_replace=True,
        replace_on_changes=REPLACE_ON_CHANGES,
    )


class CacheVolume(pulumi.ComponentResource):
    """The cache PVC, one per worker of a multi-node run (`workers`). `claim_name` (worker 0)
    and `claim_names` are the PVCs' outputs, so consumers depend on them for real."""

    def __init__(
        self,
        name: str,
        cache: CacheSettings,
        *,
        storage_class_name: str,
        namespace: str | None,
        backend: str,
        zone: str | None,
        storage_class: pulumi.Resource | None = None,
        adopt: bool = False,
        workers: int = 1,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:CacheVolume", name, None, opts)
        self.pvcs = []
        for index in range(workers):
            manifest = pvc_manifest(cache, storage_class_name, namespace, backend, zone, index if workers > 1 else None)
            # Worker 0 is the single-node claim (same resource name): raising job.nodes keeps it.
            # Only it can be adopted: the runbook made one claim.
            self.pvcs.append(
                k8s.core.v1.PersistentVolumeClaim(
                    f"{name}-pvc" if index == 0 else f"{name}-pvc-{index}",
                    opts=pvc_options(self, cache, storage_class, namespace, adopt and index == 0),
                    **constructor_kwargs(manifest),
                )
            )
        self.pvc = self.pvcs[0]
        if backend != "linstor":
            pulumi.log.warn(ROOK_CEPH_WARNING, resource=self)
        self.claim_name = self.pvc.metadata.name
        self.claim_names = [pvc.metadata.name for pvc in self.pvcs]
        self.namespace = self.pvc.metadata.namespace
        self.register_outputs({"claim_name": self.claim_name, "claim_names": self.claim_names, "namespace": self.namespace})
