"""The LINSTOR StorageClass: zone-local, single-purpose storage for the model cache (runbook step 1)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.common import adoption_options, constructor_kwargs, metadata
from mlcache.program.names import IMMUTABLE_FIELDS, LINSTOR_PARAMETER_PREFIX, LINSTOR_PROVISIONER
from mlcache.program.settings import LinstorSettings

# Kubernetes refuses in-place updates of these although the provider would try a patch.
REPLACE_ON_CHANGES = list(IMMUTABLE_FIELDS["StorageClass"])


def linstor_parameters(linstor: LinstorSettings) -> dict[str, str]:
    """CSI parameters; every value is a string (Kubernetes rejects anything else)."""
    params = {
        f"{LINSTOR_PARAMETER_PREFIX}placementCount": str(linstor.replicas),
        f"{LINSTOR_PARAMETER_PREFIX}allowRemoteVolumeAccess": "true" if linstor.allow_remote_volume_access else "false",
        # The operator defaults to ext4: XFS must be asked for.
        "csi.storage.k8s.io/fstype": linstor.fs_type,
    }
    if linstor.storage_pool:
        params[f"{LINSTOR_PARAMETER_PREFIX}storagePool"] = linstor.storage_pool
    if linstor.layer_list:
        params[f"{LINSTOR_PARAMETER_PREFIX}layerList"] = linstor.layer_list
    return params


def storage_class_manifest(linstor: LinstorSettings) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "metadata": metadata(linstor.storage_class_name),
        "provisioner": LINSTOR_PROVISIONER,
        "parameters": linstor_parameters(linstor),
        # The volume is created where the first consumer lands, so it shares the pod's zone.
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": linstor.reclaim_policy,
        "allowVolumeExpansion": linstor.allow_volume_expansion,
    }
    if linstor.mount_options:
        manifest["mountOptions"] = list(linstor.mount_options)
    return manifest


def storage_class_options(parent: pulumi.Resource, linstor: LinstorSettings, adopt: bool) -> pulumi.ResourceOptions:
    # An explicit name can only be replaced by deleting first; the PVC is not affected
    # because it references the class by a plain string (see CacheVolume).
    return pulumi.ResourceOptions(
        parent=parent,
        delete_before_replace=True,
        replace_on_changes=REPLACE_ON_CHANGES,
        **adoption_options(linstor.storage_class_name, adopt),
    )


class LinstorStorageClass(pulumi.ComponentResource):
    """A LINSTOR StorageClass: WaitForFirstConsumer, N replicas, XFS, no remote volume access."""

    def __init__(self, name: str, linstor: LinstorSettings, *, adopt: bool = False, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlcache:index:LinstorStorageClass", name, None, opts)
        self.class_name = linstor.storage_class_name  # known before deploy: which claims are on this class
        self.storage_class = k8s.storage.v1.StorageClass(
            f"{name}-class",
            opts=storage_class_options(self, linstor, adopt),
            **constructor_kwargs(storage_class_manifest(linstor)),
        )
        if linstor.allow_remote_volume_access:
            pulumi.log.warn(
                "linstor.allowRemoteVolumeAccess is true: pods on other nodes may attach the volume over "
                "the network, which gives up the zone-local latency this class exists for.",
                resource=self,
            )
        self.name = self.storage_class.metadata.name
        self.register_outputs({"name": self.name})
