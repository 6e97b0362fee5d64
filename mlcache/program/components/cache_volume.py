"""The model cache PersistentVolumeClaim (runbook step 3), in Filesystem or Block mode."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.cluster.bound_cache import ClaimFacts, PlacementRecord
from mlcache.program.components.common import adoption_options, constructor_kwargs, metadata
from mlcache.program.components.storage_class import LinstorStorageClass
from mlcache.program.names import (
    BACKEND_ANNOTATION,
    COPY_FROM_ANNOTATION,
    IMMUTABLE_FIELDS,
    PLACEMENT_ANNOTATION,
    SKIP_AWAIT,
    SWITCHED_ANNOTATION,
    WORKER_LABEL,
    ZONE_ANNOTATION,
    claim_resource_name,
    generation_claim_name,
    worker_claim_name,
)
from mlcache.program.settings import CacheSettings, Placement

# Kubernetes makes spec.volumeMode immutable, but the provider does not list it as a
# replacement field and would try (and fail) to patch it in place.
REPLACE_ON_CHANGES = list(IMMUTABLE_FIELDS["PersistentVolumeClaim"])
# The placement record (docs/day2.md): kept as created, or, with cache.relocate fresh, a replacement
# when it changes, as when the size changes (the claim is re-created at the new size).
PLACEMENT_PATH = f'metadata.annotations["{PLACEMENT_ANNOTATION}"]'
SIZE_PATH = "spec.resources.requests.storage"
RELOCATE_REPLACES = [PLACEMENT_PATH, SIZE_PATH]

RELOCATE_WARNING = (
    "cache.relocate is fresh: a change of zone, GPU product, pinning or cache.size re-creates the cache "
    "(DATA LOSS) instead of being refused or expanded in place. Once the cache has moved, set it back: "
    "pulumi config set --path mlcache:cache.relocate false"
)

ROOK_CEPH_WARNING = (
    "backend rook-ceph: the cache volume is bound immediately in Rook-Ceph's pool, not in the zone "
    "where the training pod lands, so reads may cross zones (1-10ms+ latency, limited bandwidth). "
    "This is the runbook's rollback path, not the fast one."
)


def placement_record(placement: Placement) -> PlacementRecord:
    return PlacementRecord(zone=placement.zone, gpu_product=placement.gpu_product)


def placement_of(record: PlacementRecord) -> Placement:
    """Where pods on a claim made under this record may run (a move keeps training there until it switches)."""
    return Placement(gpu_product=record.gpu_product, zone=record.zone)


def pvc_manifest(
    cache: CacheSettings,
    storage_class_name: str,
    namespace: str | None,
    backend: str,
    placement: Placement,
    worker: int | None = None,
    generation: int = 0,
    switched_from: str | None = None,
) -> dict[str, Any]:
    """The cache claim of `generation` (one per move); `worker` (multi-node runs only, index 1 and
    up) makes it that worker's own claim; `switched_from`: the claim a move switched training from
    onto this one (its mark)."""
    claim_name = worker_claim_name(cache.name, worker) if worker else generation_claim_name(cache.name, generation)
    labels = None if worker is None else {WORKER_LABEL: str(worker)}
    annotations = {BACKEND_ANNOTATION: backend}
    if generation and not worker:
        annotations[COPY_FROM_ANNOTATION] = generation_claim_name(cache.name, generation - 1)
    if switched_from and not worker:
        annotations[SWITCHED_ANNOTATION] = switched_from
    if placement.zone:
        annotations[ZONE_ANNOTATION] = placement.zone
    annotations[PLACEMENT_ANNOTATION] = placement_record(placement).text()
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
    claim_unbound: bool = False,
) -> pulumi.ResourceOptions:
    """Every cache claim's options (each worker's too): protect, delete-before-replace on a volume
    mode change, and the class as a plain dependency. `claim_unbound`: the live claim is known
    absent or not bound (the bound-cache guard read it), so no volume pins it yet and its
    placement record may follow the config."""
    adoption = adoption_options(f"{namespace}/{cache.name}", adopt)
    # While adopting, every annotation is ignored already (the record is written by the next up).
    ignored = adoption.pop("ignore_changes", [])
    if not adopt and not cache.relocates_fresh and not claim_unbound:
        ignored.append(PLACEMENT_PATH)
    return pulumi.ResourceOptions(
        **adoption,
        parent=parent,
        # A plain edge, not an output reference: replacing the class must not cascade into
        # replacing (and wiping) the cache.
        depends_on=[storage_class] if storage_class is not None else [],
        protect=cache.protect,
        delete_before_replace=True,
        replace_on_changes=REPLACE_ON_CHANGES + (RELOCATE_REPLACES if cache.relocates_fresh else []),
        ignore_changes=ignored,
    )


def kept_options(parent: pulumi.Resource, cache: CacheSettings, storage_class: pulumi.Resource | None) -> pulumi.ResourceOptions:
    """A move's old claim, until the copy is verified: left exactly as it is in the cluster, and
    deleted before its class when both go."""
    return pulumi.ResourceOptions(
        parent=parent,
        depends_on=[storage_class] if storage_class is not None else [],
        protect=cache.protect,
        ignore_changes=["metadata", "spec"],
    )


class CacheVolume(pulumi.ComponentResource):
    """The cache PVC of `generation`, one per worker of a multi-node run (`workers`), and during a
    move the old claim it is copied from (`kept`). `claim_name` (worker 0) and `claim_names` are the
    PVCs' outputs, so consumers depend on them for real; `kept_claim_name` the old one's (or None)."""

    def __init__(
        self,
        name: str,
        cache: CacheSettings,
        *,
        storage_class_name: str,
        namespace: str | None,
        backend: str,
        placement: Placement,
        made_class: LinstorStorageClass | None = None,
        adopt: bool = False,
        claim_unbound: bool = False,
        workers: int = 1,
        generation: int = 0,
        switched_from: str | None = None,
        kept: ClaimFacts | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:CacheVolume", name, None, opts)
        self.pvcs = []

        def class_of(claim_class: str) -> pulumi.Resource | None:
            """The class resource a claim on `claim_class` depends on: the one the stack makes, if it is that."""
            return made_class.storage_class if made_class is not None and made_class.class_name == claim_class else None

        storage_class = class_of(storage_class_name)
        for index in range(workers):
            manifest = pvc_manifest(
                cache,
                storage_class_name,
                namespace,
                backend,
                placement,
                index if workers > 1 else None,
                generation,
                switched_from,
            )
            # Worker 0 is the single-node claim (same resource name): raising job.nodes keeps it.
            # Only it can be adopted, and only under the runbook's name (generation 0): the runbook
            # made one claim, and a move's new claim is made, never imported, whatever adopt says.
            # The bound-cache guard reads worker 0's claim; its verdict stands for the run's other claims.
            adopted = adopt and index == 0 and generation == 0
            options = pvc_options(self, cache, storage_class, namespace, adopted, claim_unbound)
            self.pvcs.append(
                k8s.core.v1.PersistentVolumeClaim(
                    claim_resource_name(name, generation) if index == 0 else f"{name}-pvc-{index}",
                    opts=options,
                    **constructor_kwargs(manifest),
                )
            )
        self.pvc = self.pvcs[0]
        self.kept_claim_name = None
        if kept is not None:
            old = replace(cache, size=kept.size)
            manifest = pvc_manifest(
                old, kept.storage_class, namespace, kept.backend, placement_of(kept.placement), generation=kept.generation
            )
            kept_pvc = k8s.core.v1.PersistentVolumeClaim(
                claim_resource_name(name, kept.generation),
                opts=kept_options(self, cache, class_of(kept.storage_class)),
                **constructor_kwargs(manifest),
            )
            self.kept_claim_name = kept_pvc.metadata.name
        if backend != "linstor":
            pulumi.log.warn(ROOK_CEPH_WARNING, resource=self)
        if cache.relocates_fresh:
            pulumi.log.warn(RELOCATE_WARNING, resource=self)
        self.claim_name = self.pvc.metadata.name
        self.claim_names = [pvc.metadata.name for pvc in self.pvcs]
        self.namespace = self.pvc.metadata.namespace
        self.register_outputs(
            {
                "claim_name": self.claim_name,
                "claim_names": self.claim_names,
                "kept_claim_name": self.kept_claim_name,
                "namespace": self.namespace,
            }
        )
