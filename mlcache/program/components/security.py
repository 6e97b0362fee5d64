"""Hardening shared by every pod that mounts the cache, and checkov skip annotations.

The pods run as a non-root, high UID with a read-only root filesystem and no capabilities.
What they must write goes to the cache (owned by `fsGroup`) or to a scratch `emptyDir` at
/tmp that also holds HOME, so the training container keeps its caches and GPUs work (the
NVIDIA runtime exposes the devices to any user).
"""

from __future__ import annotations

from typing import Any

from mlcache.program.names import DISK_GROUP, SCRATCH_PATH

SCRATCH_VOLUME = "scratch"
# A writable HOME and a user name for libraries that look them up (getpass, triton, torch).
SCRATCH_ENV = {"HOME": f"{SCRATCH_PATH}/home", "USER": "mlcache"}


def _non_root(run_as_user: int) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": run_as_user}


def pod_security_context(run_as_user: int, block: bool = False) -> dict[str, Any]:
    context = {
        **_non_root(run_as_user),
        "runAsGroup": run_as_user,
        # The cache is writable through its group; OnRootMismatch chowns it only once, not on
        # every start of a pod over hundreds of GiB of shards.
        "fsGroup": run_as_user,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if block:
        # fsGroup does not reach a raw device: the runtime gives the container the host's device
        # node (root:disk, 0660) unless it sets device_ownership_from_security_context.
        context["supplementalGroups"] = [DISK_GROUP]
    return context


def pod_hardening(run_as_user: int, block: bool = False) -> dict[str, Any]:
    """Pod-level fields of every pod on the cache: no API token (none of them talks to the
    Kubernetes API) and the non-root security context (in the disk group for a raw device)."""
    return {"automountServiceAccountToken": False, "securityContext": pod_security_context(run_as_user, block)}


def container_security_context(run_as_user: int) -> dict[str, Any]:
    return {
        **_non_root(run_as_user),
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def scratch_volume() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "emptyDir": {}}


def scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}


def checkov_skips(reasons: dict[str, str]) -> dict[str, str]:
    """checkov's per-object skip annotations: `checkov.io/skipN: CHECK_ID=reason`."""
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(sorted(reasons.items()), 1)}


def with_checkov_skips(annotations: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """`annotations` with its checkov skips renumbered to include `extra`."""
    prefix = "checkov.io/skip"
    skips = dict(v.split("=", 1) for k, v in annotations.items() if k.startswith(prefix))
    kept = {k: v for k, v in annotations.items() if not k.startswith(prefix)}
    return {**kept, **checkov_skips({**skips, **extra})}


def namespace_skip(namespace: str | None) -> dict[str, str]:
    """No namespace is set in a stack that deploys into the kubeconfig's own namespace (dev)."""
    if namespace:
        return {}
    return {"CKV_K8S_21": "mlcache:namespace is unset: the object goes to the kubeconfig context's namespace"}


def image_skips(*images: str) -> dict[str, str]:
    """Skips for training or benchmark images that are pinned, as the settings require."""
    skips = {
        "CKV_K8S_15": "imagePullPolicy IfNotPresent: the image is pinned, and Always would make every GPU pod "
        "start depend on reaching the registry although the node has the image",
    }
    if any("@sha256:" not in image for image in images):
        skips["CKV_K8S_43"] = "pinned by an explicit release tag (latest is refused); a digest in the setting pins content"
    return skips
