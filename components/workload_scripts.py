"""The ConfigMap that carries the in-cluster scripts (warm-up, shard-loading benchmark) and
the warm-up list to the pods that mount the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.common import constructor_kwargs, metadata
from components.security import checkov_skips, namespace_skip
from settings import CacheSettings

# Names private to the pods that read the ConfigMap (`duplicates` pairs this block with the
# shared names in names.py by shape only: different facts).
WORKLOADS = Path(__file__).resolve().parent.parent / "workloads"
PREFETCH_SCRIPT = "prefetch.py"
SHARD_BENCH_SCRIPT = "shard_bench.py"
PREFETCH_LIST = "prefetch.txt"


def prefetch_markers(cache: CacheSettings) -> str:
    return f"{cache.mount_path}/.mlcache/prefetch"


def scripts_manifest(name: str, namespace: str | None, cache: CacheSettings) -> dict[str, Any]:
    data = {script: (WORKLOADS / script).read_text() for script in (PREFETCH_SCRIPT, SHARD_BENCH_SCRIPT)}
    data[PREFETCH_LIST] = "".join(f"{model}\n" for model in cache.prefetch)
    annotations = checkov_skips(namespace_skip(namespace)) or None
    return {"metadata": metadata(name, namespace, annotations=annotations), "data": data}


# `duplicates` pairs this class with HubCredentials and IngressIsolation by shape alone: the
# ComponentResource idiom (keyword-only settings, super().__init__, one child with
# parent=self, register_outputs last) written out, as in every component. Nothing to share.
class WorkloadScripts(pulumi.ComponentResource):
    """ConfigMap with prefetch.py, shard_bench.py and the prefetch list (cache.prefetch)."""

    def __init__(
        self,
        name: str,
        cache: CacheSettings,
        *,
        config_map_name: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:WorkloadScripts", name, None, opts)
        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-configmap",
            opts=pulumi.ResourceOptions(parent=self),
            **constructor_kwargs(scripts_manifest(config_map_name, namespace, cache)),
        )
        self.name = self.config_map.metadata.name
        self.register_outputs({"name": self.name})
