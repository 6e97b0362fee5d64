"""Cold-start benchmark: how fast a model's shards reach process memory, side by side on the
same files, in alternating rounds, with the files evicted from the page cache before every run.

  fio              fio's sequential read of the files: the device limit (skipped if fio is missing)
  loader           safetensors safe_open + get_tensor, file after file: the path transformers takes
                   (numpy framework, so no torch is needed)
  prewarm+loader   prewarm.py's parallel readers into the page cache, then the same loader; both
                   parts are timed: the second is the loader from the page cache
  prewarm|loader   the prewarm and the loader started together: what the training pod does
  shard reader     shard_bench.py's parallel reader (whole shards into staging buffers)
  loader in budget / prewarm|loader in budget   with --budget SIZE below the model: the loader
                   alone, and the prewarm beside it as the pod runs it when the model does not
                   fit (the first `bound` bytes in load order: the budget minus reader buffers,
                   each rank's largest tensor and two processes), each in a memory cgroup limited
                   to SIZE, page cache included (skipped where no memory cgroup can be made)
  limit            per round, the slower of fio and the loader from the page cache: no prewarm can
                   beat the device, nor the loader's own CPU time (with fio only)

Standalone (Python 3.10+, numpy, safetensors; fio when on PATH): it runs in the benchmark Job from
the mlcache-scripts ConfigMap, and locally through `mlcache bench coldstart`.

    python coldstart.py DIR [--count 8] [--size 512M] [--readers 8] [--rounds 5] [--ranks 1] [--budget SIZE]

DIR's *.safetensors are used as they are; synthetic shards are written only into a DIR without any.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import mmap
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# Absent in the runtime-only venv (./run): `mlcache bench coldstart` refuses before it loads anything.
with contextlib.suppress(ImportError):
    import numpy  # noqa: F401  (safetensors imports it on the first get_tensor: here, before any clock starts)
    from safetensors import SafetensorError, safe_open

try:
    from workloads import prewarm, shard_bench
except ImportError:  # in the pod: beside this file in the scripts ConfigMap
    import prewarm
    import shard_bench


class RunFailed(RuntimeError):
    """A side's own process failed (the prewarm beside the loader, a run in a memory cgroup)."""


FIO, LOADER, PREWARM_LOADER, ALONGSIDE, SHARD_READER = "fio", "loader", "prewarm+loader", "prewarm|loader", "shard reader"
FIO_BLOCK = 4 * 2**20
SIDES = (FIO, LOADER, PREWARM_LOADER, ALONGSIDE, SHARD_READER)
BUDGET_LOADER, BUDGET_ALONGSIDE = "loader in budget", "prewarm|loader in budget"
PROCESS_BYTES = 64 * 2**20  # a Python process with numpy and safetensors loaded
# Memory cgroups, v1 then v2: (the hierarchy, the file only it has, its limit and peak files).
CGROUP_ROOTS = (
    (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.limit_in_bytes", "memory.max_usage_in_bytes"),
    (Path("/sys/fs/cgroup"), "cgroup.controllers", "memory.max", "memory.peak"),
)
PREWARM_PART, WARM_LOADER_PART = "prewarm", "loader from page cache"
LIMIT = "limit"
TARGETS = {PREWARM_LOADER: ("time", 1.15), SHARD_READER: ("rate", 0.95)}  # issue 14's targets, relative to fio
# What the pod does, against the limit (issue 25): a prewarm beside the loader at most 5% above it.
LIMIT_TARGET = (ALONGSIDE, 1.05)
DEFAULT_ROUNDS = 5  # per-round figures spread widely on a shared disk: one round is no evidence

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: Path) -> int:
    """How much of `path` is in the page cache now (mincore(2) over a mapping of the file)."""
    size = path.stat().st_size
    if not size:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return min(sum(byte & 1 for byte in bytes(vector)) * mmap.PAGESIZE, size)
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def fio_seconds(paths: list[Path], readers: int) -> tuple[float, float]:
    """fio's buffered sequential read of exactly these files, `readers` jobs at a time: the time
    the device takes for these bytes at fio's measured rate, and fio's CPU seconds."""
    # 4 MiB reads, as a loader's; fio refuses a block larger than a file (small test shards).
    block = max(4096, min(FIO_BLOCK, *(p.stat().st_size // 4096 * 4096 for p in paths)))
    args = ["fio", "--output-format=json", "--group_reporting"]
    for index in range(min(readers, len(paths))):
        group = paths[index::readers]
        args += [
            f"--name=reader{index}",
            "--rw=read",
            f"--bs={block}",
            "--ioengine=psync",
            "--file_service_type=sequential",
            "--invalidate=1",
            "--filename=" + ":".join(str(p).replace(":", "\\:") for p in group),
        ]
    before = _children_cpu()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    read = json.loads(out[out.find("{") :])["jobs"][0]["read"]
    return read["io_bytes"] / read["bw_bytes"], _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def default_load(paths: list[Path]) -> int:
    """Every tensor of every shard through safe_open + get_tensor (mmap page faults, tensor by tensor)."""
    loaded = 0
    for path in paths:
        try:
            with safe_open(str(path), framework="np") as shard:
                for name in shard.keys():  # noqa: SIM118  (safe_open is not a mapping)
                    loaded += shard.get_tensor(name).nbytes
        except SafetensorError as err:
            raise RunFailed(f"{path.name}: not a shard safetensors can load ({err})") from None
    return loaded


def load_order_plan(paths: list[Path], bound: int | None = None) -> list[prewarm.Read]:
    """The prewarm's plan: the first `bound` bytes of the shards in load order (all of them by default)."""
    sizes = [(p, p.stat().st_size) for p in paths]
    return prewarm.plan(sizes, sum(size for _, size in sizes) if bound is None else bound)


def ranked_load(paths: list[Path], ranks: int) -> None:
    """The loader as `ranks` ranks on one node run it: that many processes at once, each mapping and
    loading every shard (they share the page cache). One rank loads in this process."""
    if ranks == 1:
        default_load(paths)
        return
    with ProcessPoolExecutor(max_workers=ranks, mp_context=multiprocessing.get_context("fork")) as pool:
        for loaded in pool.map(default_load, [paths] * ranks):
            assert loaded > 0, "a rank loaded nothing"


def prewarm_then_load(paths: list[Path], readers: int, ranks: int = 1) -> tuple[Clock, Clock]:
    """The prewarm, then the loader; the clock of each."""
    with Clock() as warming:
        prewarm.read_into_cache(load_order_plan(paths), readers)
    with Clock() as loading:
        ranked_load(paths, ranks)
    return warming, loading


def prewarm_alongside_load(
    paths: list[Path], readers: int, ranks: int = 1, bound: int | None = None, chunk: int = prewarm.CHUNK
) -> None:
    """The prewarm and the loader at once, as the pod runs them: the prewarm a process of its own
    (in a thread of the loader's process its readers would wait on the loader's GIL), reading the
    first `bound` bytes in load order (all of them by default) in `chunk`-sized reads. The loader's
    faults wait on pages the prewarm is still reading, and are served from memory where it has been."""
    warming = multiprocessing.get_context("fork").Process(
        target=prewarm.read_into_cache, args=(load_order_plan(paths, bound), readers, chunk)
    )
    warming.start()
    try:
        ranked_load(paths, ranks)
    except BaseException:
        warming.terminate()  # the run is over: its prewarm must not outlive it
        raise
    finally:
        warming.join()
    if warming.exitcode != 0:
        raise RunFailed(f"the prewarm beside the loader failed (exit status {warming.exitcode}; its error is above)")


def memory_cgroup(budget: int) -> tuple[Path | None, str]:
    """A memory cgroup of its own limited to `budget` bytes, page cache included (v1, else v2):
    (its directory, "") or (None, why it could not be made)."""
    why = "no memory cgroup hierarchy mounted at /sys/fs/cgroup"
    for root, marker, limit, _ in CGROUP_ROOTS:
        if not (root / marker).exists():
            continue
        group = root / f"mlcache-coldstart-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / limit).write_text(str(budget))
        except OSError as err:
            with contextlib.suppress(OSError):
                group.rmdir()
            why = f"cannot make a memory cgroup under {root}: {err.strerror}"
            continue
        return group, ""
    return None, why


def peak_bytes(group: Path) -> int | None:
    for *_, peak in CGROUP_ROOTS:
        with contextlib.suppress(OSError, ValueError):
            return int((group / peak).read_text())
    return None


def _in_cgroup(group: Path, work, *args) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))
    work(*args)


def run_in_cgroup(group: Path, work, *args) -> Clock:
    """`work(*args)` in a child process that joins `group` first; its clock (the child's CPU counted)."""
    child = multiprocessing.get_context("fork").Process(target=_in_cgroup, args=(group, work, *args))
    with Clock() as clock:
        child.start()
        child.join()
    if child.exitcode != 0:
        raise RunFailed(f"the run in memory cgroup {group} failed (exit {child.exitcode}; out of memory?)")
    return clock


def largest_tensor(paths: list[Path]) -> int:
    """The largest tensor's bytes, from the shards' safetensors headers (a loader copies one at a time)."""
    largest = 0
    for path in paths:
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        spans = [entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"]
        largest = max([largest, *(end - start for start, end in spans)])
    return largest


def bound_in_budget(budget: int, paths: list[Path], readers: int, ranks: int) -> int:
    """What the prewarm reads in `budget`, as the pod reckons it (headroom minus reserve minus
    reader buffers): besides it the budget holds the reader buffers, each rank's copy of the
    largest tensor and the two Python processes."""
    return budget - readers * prewarm.CHUNK - ranks * largest_tensor(paths) - 2 * PROCESS_BYTES


def host_to_device(paths: list[Path]) -> dict:
    """Host-to-device copy of every tensor after the load, when torch and a CUDA device are there."""
    try:
        import torch  # noqa: PLC0415  (optional: only where a GPU is)
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible (torch.cuda.is_available() is False)"}
    tensors = []
    for path in paths:
        with safe_open(str(path), framework="pt") as shard:
            tensors += [shard.get_tensor(name) for name in shard.keys()]  # noqa: SIM118
    torch.cuda.synchronize()
    began = time.perf_counter()
    copies = [tensor.to("cuda") for tensor in tensors]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    total = sum(t.numel() * t.element_size() for t in copies)
    return {"device": torch.cuda.get_device_name(), "bytes": total, "seconds": seconds, "gb_per_s": total / seconds / 1e9}


class Clock:
    """Wall and CPU seconds of a `with` block: this process's threads and the child processes it
    waited for (the ranks)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time() + _children_cpu()
        return self

    def __exit__(self, *_) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() + _children_cpu() - self.cpu


def run_side(
    side: str, directory: Path, paths: list[Path], readers: int, ranks: int = 1, in_budget: tuple[Path, int] | None = None
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of the side, and of its parts; `in_budget`: the memory cgroup and what the prewarm reads in it."""
    if side in (BUDGET_LOADER, BUDGET_ALONGSIDE) and in_budget:
        group, bound = in_budget
        if side == BUDGET_LOADER:
            clock = run_in_cgroup(group, ranked_load, paths, ranks)
        else:
            clock = run_in_cgroup(group, prewarm_alongside_load, paths, readers, ranks, bound)
        return {side: (clock.wall, clock.cpu)}
    if side == FIO:
        return {FIO: fio_seconds(paths, readers)}
    if side == SHARD_READER:  # its own clocks: staging buffers are allocated before they start
        result = shard_bench.load_shards(directory, readers)
        return {SHARD_READER: (result["wall_seconds"], result["cpu_seconds"])}
    if side == PREWARM_LOADER:
        warming, loading = prewarm_then_load(paths, readers, ranks)
        return {
            PREWARM_LOADER: (warming.wall + loading.wall, warming.cpu + loading.cpu),
            PREWARM_PART: (warming.wall, warming.cpu),
            WARM_LOADER_PART: (loading.wall, loading.cpu),
        }
    with Clock() as clock:
        if side == LOADER:
            ranked_load(paths, ranks)
        else:
            prewarm_alongside_load(paths, readers, ranks)
    return {side: (clock.wall, clock.cpu)}


def result_head(benchmark: str, directory: Path, paths: list[Path]) -> dict[str, Any]:
    """What a shards benchmark's result starts with: which benchmark, on which shards."""
    return {
        "benchmark": benchmark,
        "directory": str(directory),
        "shards": len(paths),
        "total_bytes": sum(p.stat().st_size for p in paths),
    }


def limit_seconds(fio: list[float], warm_loader: list[float]) -> list[float]:
    """Per round, the slower of fio and the loader from the page cache: no prewarm can finish before
    the device has delivered the bytes, nor before the loader has consumed them."""
    return [max(f, w) for f, w in zip(fio, warm_loader, strict=True)]


def benchmark(
    directory: Path, readers: int, rounds: int, count: int, size: str, ranks: int = 1, budget: int | None = None
) -> dict:
    """`rounds` rounds of every side; each round starts one side later than the last, so no side
    always runs first (or right after the same neighbour)."""
    paths = shard_bench.shard_paths(directory) or shard_bench.write_shards(directory, count, shard_bench.parse_size(size))
    sides = list(SIDES) if shutil.which("fio") else [s for s in SIDES if s != FIO]
    in_budget: tuple[Path, int] | None = None  # the memory cgroup and what the prewarm reads in it
    budget_note = "no --budget"
    if budget is not None:
        bound = bound_in_budget(budget, paths, readers, ranks)
        if bound < prewarm.CHUNK:
            budget_note = f"--budget {budget} leaves no room for a prewarm beside the loader and the readers"
        else:
            group, budget_note = memory_cgroup(budget)
            if group is not None:
                in_budget = (group, bound)
                sides += [BUDGET_LOADER, BUDGET_ALONGSIDE]
    rows = [row for side in sides for row in ([side, PREWARM_PART, WARM_LOADER_PART] if side == PREWARM_LOADER else [side])]
    seconds: dict[str, list[float]] = {row: [] for row in rows}
    cpu_seconds: dict[str, list[float]] = {row: [] for row in rows}
    left_resident = 0
    for index in range(rounds):
        for side in sides[index % len(sides) :] + sides[: index % len(sides)]:
            shard_bench.evict(paths)
            left_resident = max(left_resident, sum(resident_bytes(p) for p in paths))
            for row, (wall, cpu) in run_side(side, directory, paths, readers, ranks, in_budget).items():
                seconds[row].append(wall)
                cpu_seconds[row].append(cpu)
            # Progress on stderr: a round of every side takes minutes on a real model.
            print(f"coldstart: round {index + 1}/{rounds}: {side} {seconds[side][-1]:.2f} s", file=sys.stderr, flush=True)
    budget_result: dict[str, Any] = {"skipped": budget_note}
    if in_budget is not None:
        group, bound = in_budget
        budget_result = {"bytes": budget, "prewarm_bytes": bound, "peak_bytes": peak_bytes(group)}
        group.rmdir()
    if FIO in sides:
        seconds[LIMIT] = limit_seconds(seconds[FIO], seconds[WARM_LOADER_PART])
        cpu_seconds[LIMIT] = [
            cpu_seconds[FIO if f >= w else WARM_LOADER_PART][i]
            for i, (f, w) in enumerate(zip(seconds[FIO], seconds[WARM_LOADER_PART], strict=True))
        ]
    return {
        **result_head("coldstart", directory, paths),
        "readers": readers,
        "ranks": ranks,
        "rounds": rounds,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "resident_after_evict_bytes": left_resident,
        "fio": "fio" if FIO in sides else "skipped: fio is not on PATH",
        "host_to_device": host_to_device(paths),
        "budget": budget_result,
    }


def report(result: dict) -> str:
    total, seconds, fio = result["total_bytes"], result["seconds"], result["seconds"].get(FIO)
    limit = seconds.get(LIMIT)

    def ratios(times: list[float], reference: list[float]) -> list[float]:
        return [t / r for t, r in zip(times, reference, strict=True)]

    def row(label: str) -> str:
        times, median = seconds[label], statistics.median(seconds[label])
        indent = "  " if label in (PREWARM_PART, WARM_LOADER_PART) else ""
        line = (
            f"{indent + label:<25} {median:>8.2f} {min(times):>6.2f}-{max(times):<6.2f} {total / median / 1e9:>6.2f} "
            f"{statistics.median(result['cpu_seconds'][label]):>6.2f}"
        )
        if fio and limit:
            per_round = ratios(times, fio)
            line += f" {statistics.median(per_round):>8.2f}x {statistics.median(ratios(times, limit)):>9.2f}x"
            line += f"   {' '.join(f'{r:.2f}' for r in per_round)}"
        return line

    lines = [
        f"coldstart: {result['shards']} shards, {total / 1e9:.2f} GB in {result['directory']}, {result['readers']} readers, "
        f"{result.get('ranks', 1)} loader rank(s), "
        f"{result['rounds']} rounds (order rotating), page cache evicted before each run "
        f"(at most {result['resident_after_evict_bytes']} bytes left resident)",
        f"{'':<25} {'median s':>8} {'min-max s':>13} {'GB/s':>6} {'CPU s':>6} {'time/fio':>9} {'time/limit':>10}"
        "   per round (time/fio)",
        *(row(label) for label in seconds),
    ]
    if not fio:
        lines.append(f"fio {result['fio']}: no device reference, so no ratios (the Job's fio-shards step measures the volume)")
    for side, (kind, target) in TARGETS.items() if fio else ():
        ratio = statistics.median(ratios(seconds[side], fio))
        if kind == "time":
            lines.append(f"target {side} <= {target:.2f}x fio time: {ratio:.2f}x, {'met' if ratio <= target else 'NOT met'}")
        else:
            lines.append(
                f"target {side} >= {target:.2f}x fio GB/s: {1 / ratio:.2f}x, {'met' if 1 / ratio >= target else 'NOT met'}"
            )
    if fio and limit:
        side, target = LIMIT_TARGET
        ratio = statistics.median(ratios(seconds[side], limit))
        warm_faster = statistics.median(seconds[WARM_LOADER_PART]) < statistics.median(fio)
        lines.append(
            f"target {side} <= {target:.2f}x the limit: {ratio:.2f}x, {'met' if ratio <= target else 'NOT met'} "
            f"(the limit is {'fio: the loader from the page cache is faster' if warm_faster else 'the loader itself'})"
        )
    in_budget = result.get("budget") or {}
    if BUDGET_ALONGSIDE in seconds:
        gain = statistics.median(seconds[BUDGET_LOADER]) / statistics.median(seconds[BUDGET_ALONGSIDE])
        lines.append(
            f"budget {in_budget['bytes']} bytes of memory for {total} bytes of shards (peak use {in_budget['peak_bytes']}, "
            f"prewarm reads the first {in_budget['prewarm_bytes']}): the load with the prewarm is {gain:.2f}x as fast as alone"
        )
    elif "skipped" in in_budget and in_budget["skipped"] != "no --budget":
        lines.append(f"budget rows: skipped ({in_budget['skipped']})")
    h2d = result["host_to_device"]
    if "skipped" in h2d:
        lines.append(f"host-to-device: skipped ({h2d['skipped']})")
    else:
        copied = f"{h2d['bytes'] / 1e9:.2f} GB in {h2d['seconds']:.2f} s = {h2d['gb_per_s']:.2f} GB/s"
        lines.append(f"host-to-device ({h2d['device']}): {copied}")
    return "\n".join(lines)


def _size(text: str) -> int:
    """argparse type of a size: a bad one is one usage line, not a traceback."""
    try:
        return shard_bench.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coldstart.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--count", type=int, default=8, help="synthetic shards to write into an empty DIR")
    parser.add_argument("--size", default="512M", help="size of each synthetic shard")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--ranks", type=int, default=1, help="loader processes at once, as ranks on one node")
    parser.add_argument("--budget", type=_size, help="memory for the budget rows, page cache included (below the model's size)")
    args = parser.parse_args(argv)
    result = benchmark(args.directory, args.readers, args.rounds, args.count, args.size, args.ranks, args.budget)
    print(report(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
