"""The ConfigMap that carries the in-cluster scripts (warm-up, prewarm, shard-loading and
cold-start benchmarks), the warm-up list and the prewarm's settings to the pods that mount the cache."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache import CHECKOUT
from mlcache.program.components.common import constructor_kwargs, metadata
from mlcache.program.components.security import checkov_skips, namespace_skip
from mlcache.program.settings import CacheSettings, JobSettings, parse_quantity

# Names private to the pods that read the ConfigMap (`duplicates` pairs this block with the
# shared names in names.py by shape only: different facts).
WORKLOADS = CHECKOUT / "workloads"
PREFETCH_SCRIPT = "prefetch.py"
SHARD_BENCH_SCRIPT = "shard_bench.py"
PREWARM_SCRIPT = "prewarm.py"
COLDSTART_SCRIPT = "coldstart.py"
SCRIPTS = (PREFETCH_SCRIPT, SHARD_BENCH_SCRIPT, PREWARM_SCRIPT, COLDSTART_SCRIPT)
COPY_SCRIPT = "cache_copy.py"
PREFETCH_LIST = "prefetch.txt"
PREWARM_CONFIG = "prewarm.json"


def prefetch_markers(cache: CacheSettings) -> str:
    return f"{cache.mount_path}/.mlcache/prefetch"


def cache_env(cache: CacheSettings) -> dict[str, str]:
    """Where ms-swift (and the warm-up) keep models and datasets: on the cache volume (Filesystem mode only)."""
    if cache.is_block:
        return {}
    return {"MODELSCOPE_CACHE": f"{cache.mount_path}/modelscope", "HF_HOME": f"{cache.mount_path}/huggingface"}


def prefetch_list(cache: CacheSettings) -> str:
    """The warm-up's list as the pods read it (prefetch.txt): one model per line."""
    return "".join(f"{model}\n" for model in cache.prefetch)


def prewarm_config(job: JobSettings, cache: CacheSettings) -> dict[str, Any]:
    """prewarm.py's settings; the container's memory limit, usage and ranks are read when it runs."""
    return {
        "enabled": job.prewarm,
        "readers": job.prewarm_readers,
        "maxBytes": None if job.prewarm_max_bytes is None else int(parse_quantity(job.prewarm_max_bytes)),
        "shmBytes": int(parse_quantity(job.shm_size)),
        "markers": prefetch_markers(cache),
    }


def scripts_manifest(name: str, namespace: str | None, cache: CacheSettings, job: JobSettings) -> dict[str, Any]:
    # The durable copy's refresh and the training pod's restore step run the copy script.
    scripts = (*SCRIPTS, COPY_SCRIPT) if cache.durable_copy else SCRIPTS
    data = {script: (WORKLOADS / script).read_text() for script in scripts}
    data[PREFETCH_LIST] = prefetch_list(cache)
    data[PREWARM_CONFIG] = json.dumps(prewarm_config(job, cache), indent=2, sort_keys=True) + "\n"
    annotations = checkov_skips(namespace_skip(namespace)) or None
    return {"metadata": metadata(name, namespace, annotations=annotations), "data": data}


# `duplicates` pairs this class with HubCredentials and IngressIsolation by shape alone: the
# ComponentResource idiom (keyword-only settings, super().__init__, one child with
# parent=self, register_outputs last) written out, as in every component. Nothing to share.
class WorkloadScripts(pulumi.ComponentResource):
    """ConfigMap with the workload scripts, the prefetch list (cache.prefetch) and prewarm.json (job.prewarm*)."""

    def __init__(
        self,
        name: str,
        cache: CacheSettings,
        job: JobSettings,
        *,
        config_map_name: str,
        namespace: str | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:WorkloadScripts", name, None, opts)
        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-configmap",
            opts=pulumi.ResourceOptions(parent=self),
            **constructor_kwargs(scripts_manifest(config_map_name, namespace, cache, job)),
        )
        self.name = self.config_map.metadata.name
        self.register_outputs({"name": self.name})
