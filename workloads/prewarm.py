"""Prewarm: read the training model's weight files into the page cache with parallel readers,
beside the training command and ahead of its loader, so that the ranks' mmap loads wait on memory.

Runs in the training container, started by the run-once wrapper together with the training
command, which it is given: the model is that command's --model (a directory, or a hub id that prefetch.py
put on the cache). Python 3 standard library only. Its settings come from prewarm.json in the
mlcache-scripts ConfigMap, so changing them edits the ConfigMap, never the Job's pod template.
The page cache it fills is charged to the container's memory cgroup: it reads at most what fits
in the headroom (limit minus usage minus what training itself needs), truncating or skipping with
a log line. Any failure is a log line; the wrapper never waits for it, and stops it when
training ends.

    python3 prewarm.py [--config FILE] -- swift sft --model ORG/NAME ...   the pod's step
    python3 prewarm.py --dir DIR [--dir DIR]... [--readers 8] [--max-bytes N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

try:
    from workloads import prefetch
except ImportError:  # in the pod: beside this file in the scripts ConfigMap
    import prefetch

CHUNK = 16 * 2**20  # one read per chunk; chunks are handed out in load order
WEIGHT_PATTERN = "*.safetensors"  # what transformers (and so ms-swift) mmaps
# What one training rank needs of host memory while the model loads (Python, torch, the CUDA
# context, dataloader workers): the prewarm leaves it free for each of NPROC_PER_NODE ranks.
RANK_HOST_BYTES = 8 * 2**30
CGROUP = Path("/sys/fs/cgroup")
MEMINFO = Path("/proc/meminfo")


def log(message: str) -> None:
    print(f"mlcache: prewarm: {message}", flush=True)


@dataclass(frozen=True)
class Read:
    """The first `length` bytes of `path` (the whole file unless the budget truncated it)."""

    path: Path
    length: int
    size: int


def weight_files(directory: Path) -> list[Path]:
    """A model's shards in the order a loader opens them (model-00001-of-0000N first)."""
    return sorted(directory.glob(WEIGHT_PATTERN))


def training_model(command: list[str]) -> str | None:
    """The --model of a training command line (ms-swift's and transformers' scripts' flag)."""
    for index, arg in enumerate(command):
        if arg == "--model" and index + 1 < len(command):
            return command[index + 1]
        if arg.startswith("--model="):
            return arg.partition("=")[2]
    return None


def model_directory(model: str, marker_dir: Path) -> Path | None:
    """A directory as it is; a hub id where prefetch.py put it (its marker records the path),
    from the hub the training uses (ms-swift: ModelScope unless USE_HF is set) first."""
    if Path(model).is_dir():
        return Path(model)
    hubs = [prefetch.MODELSCOPE, prefetch.HUGGINGFACE]
    if os.environ.get("USE_HF", "").lower() in ("1", "true", "yes"):
        hubs.reverse()
    for hub in hubs:
        marker = prefetch.marker_path(marker_dir, hub, model)
        if marker.exists():
            return Path(json.loads(marker.read_text())["path"])
    log(f"{model} has no prefetch marker in {marker_dir} (list it in cache.prefetch to prewarm it); nothing to read")
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def memory_headroom(cgroup: Path = CGROUP, meminfo: Path = MEMINFO) -> tuple[int, str]:
    """Bytes this container can still fill: its cgroup's limit minus usage (v2, else v1), and
    never more than the node's MemAvailable. Returns the figure and how it was found."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit, usage = _read_int(cgroup / "memory.max"), _read_int(cgroup / "memory.current")
    if limit is None:  # cgroup v1 (an unlimited v1 group reports a huge number, fine for min())
        limit, usage = _read_int(cgroup / "memory/memory.limit_in_bytes"), _read_int(cgroup / "memory/memory.usage_in_bytes")
    candidates = []
    if limit is not None and usage is not None:
        candidates.append((limit - usage, f"cgroup limit {limit} - usage {usage}"))
    if available is not None:
        candidates.append((available, f"MemAvailable {available}"))
    if not candidates:
        return 0, "no cgroup memory limit or /proc/meminfo readable"
    return min(candidates)


def plan(files: list[tuple[Path, int]], budget: int) -> list[Read]:
    """Whole files in load order while they fit in `budget`, then the head of the next one."""
    reads = []
    for path, size in files:
        length = min(size, budget)
        if length <= 0:
            break
        reads.append(Read(path, length, size))
        budget -= length
    return reads


def read_into_cache(reads: list[Read], readers: int, chunk: int = CHUNK) -> int:
    """Read the planned bytes with `readers` threads, chunk by chunk in load order (so the first
    shards are complete first), each thread into its own reused buffer. Returns bytes read."""
    if not reads:
        return 0
    fds = {read.path: os.open(read.path, os.O_RDONLY) for read in reads}
    work = iter(
        [(read.path, offset, min(chunk, read.length - offset)) for read in reads for offset in range(0, read.length, chunk)]
    )
    lock = threading.Lock()

    def reader(_: int) -> int:
        buffer, total = memoryview(bytearray(chunk)), 0
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return total
            path, offset, length = item
            got = os.preadv(fds[path], [buffer[:length]], offset)
            if got < length:
                raise OSError(f"{path}: short read at {offset} ({got} of {length} bytes): the file changed under the prewarm")
            total += got

    try:
        with ThreadPoolExecutor(max_workers=readers) as pool:
            return sum(pool.map(reader, range(readers)))
    finally:
        for fd in fds.values():
            os.close(fd)


def prewarm(directories: list[Path], readers: int, max_bytes: int | None, reserve_bytes: int) -> dict:
    """Plan against the memory headroom and the configured bound, read, and report."""
    files = [(path, path.stat().st_size) for directory in directories for path in weight_files(directory)]
    wanted = sum(size for _, size in files)
    headroom, found = memory_headroom()
    # The readers' own buffers are memory too.
    budget = headroom - reserve_bytes - readers * CHUNK
    why = f"headroom {headroom} ({found}) - reserve {reserve_bytes} - reader buffers {readers * CHUNK}"
    if max_bytes is not None and max_bytes < budget:
        budget, why = max_bytes, f"the configured bound {max_bytes}"
    result = {"files": len(files), "wanted_bytes": wanted, "budget_bytes": max(budget, 0), "bytes": 0, "seconds": 0.0}
    if not files:
        log("no *.safetensors in " + (", ".join(map(str, directories)) or "no model directory") + "; nothing to read")
        return result
    if budget <= 0:
        log(f"skipped: {wanted} bytes of shards, no room ({why}); the shards load from the device")
        return result
    reads = plan(files, budget)
    if sum(r.length for r in reads) < wanted:
        log(f"truncated: {wanted} bytes of shards, reading the first {budget} ({why})")
    log(f"reading {sum(r.length for r in reads)} bytes of {len(files)} shards in load order with {readers} readers")
    began = time.perf_counter()
    result["bytes"] = read_into_cache(reads, readers)
    result["seconds"] = time.perf_counter() - began
    rate = result["bytes"] / result["seconds"] / 1e9 if result["seconds"] else 0.0
    log(
        f"read {result['bytes']} bytes of {wanted} ({sum(r.length == r.size for r in reads)} of {len(files)} shards whole) "
        f"in {result['seconds']:.1f} s = {rate:.2f} GB/s with {readers} readers"
    )
    return result


def from_config(config_file: Path, command: list[str]) -> None:
    config = json.loads(config_file.read_text())
    if not config["enabled"]:
        log("off (job.prewarm is false)")
        return
    model = training_model(command)
    if model is None:
        log("the training command has no --model; nothing to read")
        return
    directory = model_directory(model, Path(config["markers"]))
    if directory is not None:
        prewarm([directory], config["readers"], config["maxBytes"], training_reserve(config["shmBytes"]))


def training_reserve(shm_bytes: int) -> int:
    """Memory the training needs besides the page cache: /dev/shm (it fills during training and
    counts against the same limit) and each rank's own host memory."""
    ranks = os.environ.get("NPROC_PER_NODE", "1")
    return shm_bytes + (int(ranks) if ranks.isdigit() else 1) * RANK_HOST_BYTES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="prewarm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("prewarm.json"))
    parser.add_argument("--dir", type=Path, action="append", help="a model directory (instead of the command's --model)")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--max-bytes", type=int)
    parser.add_argument("--reserve-bytes", type=int, default=0)
    args = parser.parse_args(argv[:split])
    try:
        if args.dir:
            prewarm(args.dir, args.readers, args.max_bytes, args.reserve_bytes)
        else:
            from_config(args.config, argv[split + 1 :])
    except Exception as err:  # one line for the log; the wrapper starts training regardless
        log(f"failed: {type(err).__name__}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
