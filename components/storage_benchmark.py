"""The optional storage benchmark Job: fio profiles, then the shard-loading benchmark, on the
cache, scheduled exactly like the training Job (see "The first-consumer trap" in the README)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cache_volume import attach_cache, cache_volume
from components.common import constructor_kwargs, metadata
from components.placement import pod_scheduling, training_resources
from components.security import (
    SCRATCH_ENV,
    checkov_skips,
    container_security_context,
    image_skips,
    namespace_skip,
    pod_hardening,
    scratch_mount,
    scratch_volume,
)
from components.workload_scripts import SCRIPTS_VOLUME, SHARD_BENCH_SCRIPT
from names import POD_LABELS, SCRIPTS_PATH, SKIP_AWAIT, benchmark_job_name
from settings import BenchmarkSettings, CacheSettings, JobSettings, Placement

APP_LABEL = {"app": "mlcache-benchmark"}


def bench_dir(cache: CacheSettings, what: str) -> str:
    return f"{cache.mount_path}/.mlcache/bench/{what}"


def fio_args(profile: str, bench: BenchmarkSettings, cache: CacheSettings) -> list[str]:
    if profile == "seqread":  # the runbook's
        args = ["--name=seqread", "--rw=read", "--bs=4M", f"--size={bench.size}", "--numjobs=1"]
    else:  # a model shard load: large direct sequential reads, parallel readers, deep queues
        args = [
            "--name=shards",
            "--rw=read",
            "--bs=4M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=32",
            f"--numjobs={bench.readers}",
            f"--size={bench.shard_size}",
            "--group_reporting",
        ]
    if cache.is_block:
        # Read-only on the raw device; each parallel reader gets its own region.
        args += [f"--filename={cache.device_path}", "--readonly"]
        if profile == "shards":
            args.append(f"--offset_increment={bench.shard_size}")
    else:
        # fio lays its files out, reads them (page cache invalidated first), then removes them.
        args += [f"--directory={bench_dir(cache, 'fio')}", "--unlink=1"]
    return [*args, "--output-format=json"]


def fio_container(profile: str, bench: BenchmarkSettings, cache: CacheSettings, job: JobSettings) -> dict[str, Any]:
    args = fio_args(profile, bench, cache)
    # In Filesystem mode fio needs its directory to exist first.
    mkdir_then_fio = ["sh", "-c", 'mkdir -p "$0" && exec fio "$@"', bench_dir(cache, "fio")]
    command = ["fio", *args] if cache.is_block else [*mkdir_then_fio, *args]
    return _container(f"fio-{profile}", bench.fio_image, command, cache, job)


def shard_load_container(bench: BenchmarkSettings, cache: CacheSettings, job: JobSettings) -> dict[str, Any]:
    command = [
        "python",
        f"{SCRIPTS_PATH}/{SHARD_BENCH_SCRIPT}",
        "run",
        bench_dir(cache, "shards"),
        f"--count={bench.shard_count}",
        f"--size={bench.shard_size}",
        f"--readers={bench.readers}",
    ]
    spec = _container("shard-load", job.image, command, cache, job)
    spec["volumeMounts"].append({"name": SCRIPTS_VOLUME, "mountPath": SCRIPTS_PATH, "readOnly": True})
    return spec


def _container(name: str, image: str, command: list[str], cache: CacheSettings, job: JobSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in SCRATCH_ENV.items()],
        # The training pod's own resources: the pod fits only on a node where training fits.
        "resources": training_resources(job),
        "volumeMounts": [scratch_mount()],
        "securityContext": container_security_context(job.run_as_user),
    }
    return attach_cache(spec, cache)


def benchmark_manifest(
    name: str,
    bench: BenchmarkSettings,
    cache: CacheSettings,
    job: JobSettings,
    placement: Placement,
    namespace: str | None,
    claim_name: pulumi.Input[str],
    scripts: pulumi.Input[str] | None,
) -> dict[str, Any]:
    # One step after the other (init containers run in order): no run disturbs another.
    steps = [fio_container(profile, bench, cache, job) for profile in bench.profiles]
    if bench.shard_load:
        steps.append(shard_load_container(bench, cache, job))
    volumes = [cache_volume(claim_name), scratch_volume()]
    if bench.shard_load:
        volumes.append({"name": SCRIPTS_VOLUME, "configMap": {"name": scripts}})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        **pod_scheduling(job, placement),
        **pod_hardening(job.run_as_user),
        "containers": steps[-1:],
        "volumes": volumes,
    }
    if steps[:-1]:
        pod_spec["initContainers"] = steps[:-1]
    images = sorted({c["image"] for c in steps})
    annotations = {**SKIP_AWAIT, **checkov_skips({**namespace_skip(namespace), **image_skips(*images)})}
    return {
        "metadata": metadata(name, namespace, labels=APP_LABEL, annotations=annotations),
        "spec": {
            "backoffLimit": 1,
            "template": {"metadata": {"labels": {**POD_LABELS, **APP_LABEL}}, "spec": pod_spec},
        },
    }


class StorageBenchmark(pulumi.ComponentResource):
    """fio (seqread, shards) and shard-loading runs on the cache, placed like the training Job."""

    def __init__(
        self,
        name: str,
        bench: BenchmarkSettings,
        *,
        cache: CacheSettings,
        job: JobSettings,
        placement: Placement,
        namespace: str | None,
        claim_name: pulumi.Input[str],
        scripts: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mlcache:index:StorageBenchmark", name, None, opts)
        manifest = benchmark_manifest(benchmark_job_name(job.name), bench, cache, job, placement, namespace, claim_name, scripts)
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            **constructor_kwargs(manifest),
        )
        self.name = self.job.metadata.name
        self.register_outputs({"name": self.name})
