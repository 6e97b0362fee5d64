"""The model cache PersistentVolumeClaim (runbook step 3), in Filesystem or Block mode."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.common import adoption_options, constructor_kwargs, metadata
from names import BACKEND_ANNOTATION, IMMUTABLE_FIELDS, SKIP_AWAIT, ZONE_ANNOTATION
from settings import CacheSettings

# Kubernetes makes spec.volumeMode immutable, but the provider does not list it as a
# replacement field and would try (and fail) to patch it in place.
REPLACE_ON_CHANGES = list(IMMUTABLE_FIELDS["PersistentVolumeClaim"])

# The name of the cache in every pod spec that mounts it.
CACHE_VOLUME = "cache"

ROOK_CEPH_WARNING = (
    "backend rook-ceph: the cache volume is bound immediately in Rook-Ceph's pool, not in the zone "
    "where the training pod lands, so reads may cross zones (1-10ms+ latency, limited bandwidth). "
    "This is the runbook's rollback path, not the fast one."
)


def pvc_manifest(
    cache: CacheSettings, storage_class_name: str, namespace: str | None, backend: str, zone: str | None
) -> dict[str, Any]:
    annotations = {BACKEND_ANNOTATION: backend}
    if zone:
        annotations[ZONE_ANNOTATION] = zone
    if backend == "linstor":
        # A WaitForFirstConsumer claim stays Pending until the training pod lands: do not let the
        # provider wait for Bound (it only skips that wait itself when it can read the class).
        annotations.update(SKIP_AWAIT)
    return {
        "metadata": metadata(cache.name, namespace, annotations=annotations),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class_name,
            "volumeMode": cache.volume_mode,
            "resources": {"requests": {"storage": cache.size}},
        },
    }


def cache_volume(claim_name: pulumi.Input[str]) -> dict[str, Any]:
    """The pod volume of the cache; `claim_name` is the PVC's output, a real dependency."""
    return {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim_name}}


def attach_cache(container: dict[str, Any], cache: CacheSettings) -> dict[str, Any]:
    """The cache in a container: the raw device in Block mode, else mounted (first mount)."""
    if cache.is_block:
        container["volumeDevices"] = [{"name": CACHE_VOLUME, "devicePath": cache.device_path}]
    else:
        container["volumeMounts"].insert(0, {"name": CACHE_VOLUME, "mountPath": cache.mount_path})
    return container


def pvc_options(
    parent: pulumi.Resource,
    cache: CacheSettings,
    storage_class: pulumi.Resource | None,
    namespace: str | None,
    adopt: bool,
) -> pulumi.ResourceOptions:
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
    """The cache PVC. `claim_name` is the PVC's output, so consumers depend on it for real."""

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
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:CacheVolume", name, None, opts)
        manifest = pvc_manifest(cache, storage_class_name, namespace, backend, zone)
        self.pvc = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-pvc", opts=pvc_options(self, cache, storage_class, namespace, adopt), **constructor_kwargs(manifest)
        )
        if backend != "linstor":
            pulumi.log.warn(ROOK_CEPH_WARNING, resource=self)
        self.claim_name = self.pvc.metadata.name
        self.namespace = self.pvc.metadata.namespace
        self.register_outputs({"claim_name": self.claim_name, "namespace": self.namespace})
