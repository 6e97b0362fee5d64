"""Shard-loading benchmark: read a directory of safetensors shards with parallel readers,
deserialise every tensor, and report aggregate GB/s, time to first shard and per-shard times.
Each reader reads a whole shard into its page-aligned staging buffer with O_DIRECT (no page
cache, no copy) where the filesystem allows it, buffered otherwise (or with --io buffered).

Standalone (Python 3.10+, numpy, safetensors): it runs in the cluster from the mlcache-scripts
ConfigMap with the training image, and locally through `mlcache bench shards`.

    python shard_bench.py write DIR --count 8 --size 1G     synthetic shards (kept if present)
    python shard_bench.py load DIR [--readers 8] [--io direct] [--evict]   the measurement, JSON on stdout
    python shard_bench.py run DIR --count 8 --size 1G       write if missing, evict, load
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import queue
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TENSOR_BYTES = 64 * 2**20  # synthetic shards hold tensors of at most 64 MiB, like real checkpoints
PAGE = mmap.PAGESIZE
DIRECT, BUFFERED = "direct", "buffered"
IO_MODES = (DIRECT, BUFFERED)
# O_DIRECT read size: a few max_sectors_kb-sized requests in flight per reader (docs/coldstart.md).
DIRECT_CHUNK = 16 * 2**20
# safetensors dtypes as numpy reads them (bf16 and fp8 have no numpy type: their raw bits). numpy
# and safetensors are imported where used: `mlcache bench` parses its options without them.
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "F8_E4M3": "uint8", "F8_E5M2": "uint8",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_SIZE = re.compile(r"^([1-9][0-9]*)([KMGT]?)$")


def parse_size(text: str) -> int:
    """fio's size syntax (binary suffixes): 512M, 1G."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512M or 1G)")
    return int(match[1]) * 1024 ** " KMGT".index(match[2] or " ")


def shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def write_shards(directory: Path, count: int, size: int) -> list[Path]:
    """Shards named like a Hugging Face checkpoint, each about `size` bytes of bf16-like data."""
    import numpy as np  # noqa: PLC0415
    from safetensors.numpy import save_file  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = directory / f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        paths.append(path)
        if path.exists() and abs(path.stat().st_size - size) < TENSOR_BYTES:
            continue
        tensors, remaining, part = {}, size, 0
        while remaining > 0:
            nbytes = min(TENSOR_BYTES, remaining)
            tensors[f"layers.{part}.weight"] = rng.integers(0, 2**16, nbytes // 2, dtype=np.uint16)
            remaining -= nbytes
            part += 1
        save_file(tensors, str(path))
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    return paths


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache so the next read comes from the device."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def deserialize(buffer: memoryview) -> dict[str, np.ndarray]:
    """Tensors of a safetensors image in memory: header parsed, arrays built over the bytes (no copy)."""
    import numpy as np  # noqa: PLC0415

    header_len = int.from_bytes(buffer[:8], "little")
    header = json.loads(bytes(buffer[8 : 8 + header_len]))
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        if base + end > len(buffer) or (end - start) % dtype.itemsize:
            raise ValueError(f"tensor {name}: data_offsets {start}..{end} outside the shard")
        array = np.frombuffer(buffer, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        tensors[name] = array.reshape(info["shape"])
    return tensors


def staging_buffer(size: int) -> memoryview:
    """A page-aligned host buffer (O_DIRECT reads land in it) with every page touched: what a
    loader's pinned staging memory is. Rounded up to whole pages for the last direct read."""
    buffer = mmap.mmap(-1, _whole_pages(size))
    view = memoryview(buffer)
    view[::PAGE] = b"\1" * len(range(0, len(buffer), PAGE))
    return view


def _whole_pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _open(path: Path, io: str) -> tuple[int, str]:
    """O_DIRECT when asked and the filesystem allows it (else EINVAL), buffered otherwise."""
    if io == DIRECT:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT), DIRECT
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_RDONLY), BUFFERED


def read_whole(path: Path, buffer: memoryview, size: int, io: str) -> str:
    """The file into buffer[:size]. O_DIRECT: the device writes straight into the buffer, chunk by
    chunk (no page cache, no copy); the last chunk is rounded up to a page and stops at the end
    of the file. Buffered: one read of the rest at a time, through the page cache."""
    fd, mode = _open(path, io)
    try:
        offset = 0
        while offset < size:
            end = min(offset + DIRECT_CHUNK, _whole_pages(size)) if mode == DIRECT else size
            read = os.preadv(fd, [buffer[offset:end]], offset)
            if not read:
                raise OSError(f"{path}: short read at {offset} of {size} bytes")
            offset += read
    finally:
        os.close(fd)
    return mode


def _load_one(path: Path, buffer: memoryview, start: float, io: str) -> dict:
    began = time.perf_counter()
    size = path.stat().st_size
    mode = read_whole(path, buffer, size, io)
    tensors = deserialize(buffer[:size])
    done = time.perf_counter()
    return {
        "shard": path.name,
        "bytes": size,
        "io": mode,
        "tensors": len(tensors),
        "tensor_bytes": int(sum(t.nbytes for t in tensors.values())),
        "seconds": done - began,
        "finished_at": done - start,
    }


def load_shards(directory: Path, readers: int, io: str = DIRECT) -> dict:
    """Read every shard whole with `readers` parallel readers, each into its own staging buffer
    (allocated before the clock starts, reused shard after shard), and build its tensors."""
    paths = shard_paths(directory)
    if not paths:
        raise SystemExit(f"shard_bench: no *.safetensors in {directory}")
    largest = max(p.stat().st_size for p in paths)
    buffers: queue.Queue[memoryview] = queue.Queue()
    for _ in range(min(readers, len(paths))):
        buffers.put(staging_buffer(largest))

    def load_with_a_buffer(path: Path) -> dict:
        buffer = buffers.get()
        try:
            return _load_one(path, buffer, start, io)
        finally:
            buffers.put(buffer)

    start, start_cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=readers) as pool:
        shards = list(pool.map(load_with_a_buffer, paths))
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    total = sum(s["bytes"] for s in shards)
    return {
        "benchmark": "shard-load",
        "directory": str(directory),
        "readers": readers,
        "io": "+".join(sorted({s["io"] for s in shards})),
        "shards": shards,
        "total_bytes": total,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "gb_per_s": total / wall / 1e9,
        "first_shard_seconds": min(s["finished_at"] for s in shards),
    }


def summary(result: dict) -> str:
    lines = [
        f"shard-load: {len(result['shards'])} shards, {result['total_bytes'] / 1e9:.2f} GB in "
        f"{result['wall_seconds']:.2f} s = {result['gb_per_s']:.2f} GB/s with {result['readers']} readers ({result['io']}); "
        f"first shard after {result['first_shard_seconds']:.2f} s"
    ]
    lines += [f"  {s['shard']}: {s['bytes'] / 1e9:.2f} GB in {s['seconds']:.2f} s" for s in result["shards"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shard_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "load", "run"))
    parser.add_argument("directory", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--io", choices=IO_MODES, default=DIRECT, help="direct: O_DIRECT where the filesystem allows it")
    parser.add_argument("--evict", action="store_true", help="drop the shards from the page cache first")
    args = parser.parse_args(argv)
    if args.action in ("write", "run"):
        paths = write_shards(args.directory, args.count, parse_size(args.size))
        if args.action == "write":
            print(f"shard_bench: {len(paths)} shards in {args.directory}", file=sys.stderr)
            return 0
    if args.evict or args.action == "run":
        evict(shard_paths(args.directory))
    result = load_shards(args.directory, args.readers, args.io)
    print(summary(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
