"""The optional storage benchmark Job: fio profiles, then the shard-loading and cold-start
benchmarks, on the cache, scheduled exactly like the training Job (see "The first-consumer trap"
in docs/benchmarking.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from mlcache.program.components.cache_pod import CachePod, container, held_spec, job_manifest, pod_spec, scripts_mount
from mlcache.program.components.common import constructor_kwargs
from mlcache.program.components.security import scratch_mount
from mlcache.program.components.workers import run_workers
from mlcache.program.components.workload_scripts import COLDSTART_SCRIPT, SHARD_BENCH_SCRIPT
from mlcache.program.names import BENCHMARK_APP_LABEL, SCRIPTS_PATH, benchmark_job_name, worker_benchmark_name
from mlcache.program.settings import BenchmarkSettings, CacheSettings

COLDSTART_ROUNDS = 3


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


def fio_container(pod: CachePod, profile: str, bench: BenchmarkSettings) -> dict[str, Any]:
    cache = pod.cache
    args = fio_args(profile, bench, cache)
    # In Filesystem mode fio needs its directory to exist first.
    mkdir_then_fio = ["sh", "-c", 'mkdir -p "$0" && exec fio "$@"', bench_dir(cache, "fio")]
    command = ["fio", *args] if cache.is_block else [*mkdir_then_fio, *args]
    assert bench.fio_image is not None, "settings require benchmark.fioImage with profiles"
    return container(pod, f"fio-{profile}", bench.fio_image, command)


def shard_load_container(pod: CachePod, bench: BenchmarkSettings) -> dict[str, Any]:
    command = ["python", f"{SCRIPTS_PATH}/{SHARD_BENCH_SCRIPT}", "run", *_shard_args(pod.cache, bench)]
    return container(pod, "shard-load", pod.job.image, command, mounts=[scratch_mount(), scripts_mount()])


def coldstart_container(pod: CachePod, bench: BenchmarkSettings) -> dict[str, Any]:
    """fio (when the image has it), the default loader, prewarm + loader and the shard reader on
    the shards the shard-load step left, alternating rounds (docs/coldstart.md)."""
    command = ["python", f"{SCRIPTS_PATH}/{COLDSTART_SCRIPT}", *_shard_args(pod.cache, bench), f"--rounds={COLDSTART_ROUNDS}"]
    return container(pod, "cold-start", pod.job.image, command, mounts=[scratch_mount(), scripts_mount()])


def _shard_args(cache: CacheSettings, bench: BenchmarkSettings) -> list[str]:
    return [
        bench_dir(cache, "shards"),
        f"--count={bench.shard_count}",
        f"--size={bench.shard_size}",
        f"--readers={bench.readers}",
    ]


def benchmark_manifest(pod: CachePod, bench: BenchmarkSettings) -> dict[str, Any]:
    # One step after the other (init containers run in order): no run disturbs another.
    steps = [fio_container(pod, profile, bench) for profile in bench.profiles]
    if bench.shard_load:
        steps += [shard_load_container(pod, bench), coldstart_container(pod, bench)]
    worker = pod.worker
    name = worker_benchmark_name(pod.job.name, worker.index) if worker else benchmark_job_name(pod.job.name)
    return job_manifest(pod, name, pod_spec(pod, steps), app_label=BENCHMARK_APP_LABEL, backoff_limit=1)


def worker_benchmark_manifests(
    pod: CachePod, bench: BenchmarkSettings, claim_names: list[pulumi.Input[str]]
) -> list[dict[str, Any]]:
    """One benchmark per cache claim. With several workers, worker i's benchmark is placed as
    worker i (its node, the run's zone): as the first consumer of the claim it decides the node
    the training worker then needs, so it must land where that worker may run."""
    if len(claim_names) == 1:
        return [benchmark_manifest(dataclasses.replace(pod, claim_name=claim_names[0]), bench)]
    job = pod.job
    workers = run_workers(job.run_name, job.nodes, job.engine, pinned=pod.placement.zone is not None)
    return [
        benchmark_manifest(dataclasses.replace(pod, claim_name=claim_name, worker=worker), bench)
        for worker, claim_name in zip(workers, claim_names, strict=True)
    ]


class StorageBenchmark(pulumi.ComponentResource):
    """fio (seqread, shards) and shard-loading runs on each cache claim, placed like the training Job."""

    def __init__(
        self,
        name: str,
        pod: CachePod,
        bench: BenchmarkSettings,
        *,
        claim_names: list[pulumi.Input[str]],
        held: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """`held`: a move of the cache is under way: the Jobs stay as they are until the switch."""
        super().__init__("mlcache:index:StorageBenchmark", name, None, opts)
        # The scripts ConfigMap only for the shard-loading run (fio needs none).
        pod = dataclasses.replace(pod, scripts=pod.scripts if bench.shard_load else None)
        self.jobs = [
            k8s.batch.v1.Job(
                f"{name}-job" if index == 0 else f"{name}-job-{index}",
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, ignore_changes=held_spec(held)),
                **constructor_kwargs(manifest),
            )
            for index, manifest in enumerate(worker_benchmark_manifests(pod, bench, claim_names))
        ]
        self.name = self.jobs[0].metadata.name
        self.names = [j.metadata.name for j in self.jobs]
        self.register_outputs({"name": self.name, "names": self.names})
