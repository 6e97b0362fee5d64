"""`mlcache bench copy`: workloads/cache_copy.py against the disk's own limits, side by side.

On a generated cache (incompressible multi-segment files plus a thousand small ones), each round
times, with the source evicted from the page cache first:
  fio read    fio's sequential read of the source files (4M blocks, buffered, --invalidate)
  fio write   fio's sequential write of as many bytes into the destination's directory (end fsync)
  local       cache_copy.py local --streams N (a copy pod mounting both claims)
  send|receive  cache_copy.py send + receive --streams N over the loopback (the two-pod path)
Each copy is timed to its verified end (it reads every written byte back from the device). The
ratio is the copy's rate over the slower fio figure: the limit a copy between the two can reach.
The last line says what the verification costs: the rate of its two reads and one write done one
after another at fio's rates (a copy above it overlaps them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlcache import CHECKOUT
from workloads import shard_bench

SCRIPT = CHECKOUT / "workloads" / "cache_copy.py"
SIDES = ("fio read", "fio write", "local", "send|receive")


def generate(source: Path, files: int, size: int) -> list[Path]:
    """The benchmark's cache: `files` incompressible files of `size` bytes, 1000 small files, links."""
    blobs = source / "blobs"
    small = source / "snapshots" / "rev" / "small"
    small.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    paths = []
    for index in range(files):
        path = blobs / f"blob-{index}"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as out:
                for _ in range(0, size, 64 << 20):
                    out.write(os.urandom(min(64 << 20, size - out.tell())))
        link = source / "snapshots" / "rev" / f"model-{index}.safetensors"
        if not link.is_symlink():
            link.symlink_to(f"../../blobs/blob-{index}")
        paths.append(path)
    for index in range(1000):
        (small / f"part-{index:04d}.json").write_text(json.dumps({"index": index}))
    return paths


def _fio(args: list[str]) -> float:
    """fio's throughput in bytes/s (read or write, whichever the job did)."""
    done = subprocess.run(["fio", "--output-format=json", "--group_reporting", *args], capture_output=True, text=True, check=True)
    job = json.loads(done.stdout[done.stdout.index("{") :])["jobs"][0]
    return max(job["read"]["bw_bytes"], job["write"]["bw_bytes"])


def fio_read(paths: list[Path]) -> float:
    files = ":".join(str(p).replace(":", "\\:") for p in paths)
    return _fio(["--name=read", "--rw=read", "--bs=4M", "--ioengine=psync", "--invalidate=1", "--filename=" + files])


def fio_write(directory: Path, total: int) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        args = ["--name=write", "--rw=write", "--bs=4M", "--ioengine=psync", "--end_fsync=1", f"--size={total}"]
        return _fio([*args, f"--directory={directory}", "--unlink=1"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _copy(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cache_copy.py {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def local_copy(source: Path, destination: Path, streams: int) -> float:
    shutil.rmtree(destination, ignore_errors=True)
    start = time.perf_counter()
    result = _copy(["local", "--from", str(source), "--to", str(destination), "--streams", str(streams)])
    return result["bytes"] / (time.perf_counter() - start)


def start_sender(source: Path, token: Path) -> tuple[subprocess.Popen, str]:
    """`cache_copy.py send` of `source` on a free loopback port, returned once it is listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    sender = subprocess.Popen(
        [sys.executable, str(SCRIPT), "send", "--root", str(source), "--listen", address, "--token-file", str(token)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = sender.stderr.readline() if sender.stderr else ""
    if "serving" not in first:
        sender.kill()
        sender.wait()
        raise RuntimeError(f"cache_copy.py send did not start: {first.strip() or 'no output'}")
    return sender, address


def network_copy(source: Path, destination: Path, streams: int, work: Path) -> float:
    shutil.rmtree(destination, ignore_errors=True)
    token = work / "token"
    token.write_text(secrets.token_hex(24))
    sender, address = start_sender(source, token)
    try:
        start = time.perf_counter()
        result = _copy(
            ["receive", "--root", str(destination), "--source", address, "--token-file", str(token), "--streams", str(streams)]
        )
        return result["bytes"] / (time.perf_counter() - start)
    finally:
        sender.kill()
        sender.wait()


def benchmark(directory: Path, files: int, size: int, streams: int, rounds: int, progress=print) -> dict:
    source = directory / "src"
    paths = generate(source, files, size)
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for index in range(rounds):
            order = SIDES[index % len(SIDES) :] + SIDES[: index % len(SIDES)]  # rotated: no side always first
            for side in order:
                progress(f"round {index + 1}/{rounds}: {side}")
                shard_bench.evict(paths)
                if side == "fio read":
                    rates[side].append(fio_read(paths))
                elif side == "fio write":
                    rates[side].append(fio_write(directory / "fio-write", total))
                elif side == "local":
                    rates[side].append(local_copy(source, directory / "dst-local", streams))
                else:
                    rates[side].append(network_copy(source, directory / "dst-net", streams, directory))
    finally:
        for name in ("dst-local", "dst-net", "fio-write"):
            shutil.rmtree(directory / name, ignore_errors=True)
    return {"bytes": total, "files": files, "size": size, "streams": streams, "rounds": rounds, "rates": rates}


def report(result: dict) -> str:
    medians = {side: statistics.median(values) for side, values in result["rates"].items()}
    limit = min(medians["fio read"], medians["fio write"])
    lines = [
        f"{result['bytes'] / 1e9:.2f} GB: {result['files']} files of {result['size'] / 2**20:.0f} MiB + 1000 small; "
        f"{result['streams']} streams; medians of {result['rounds']} rounds, then each round",
        f"{'side':<14} {'GB/s':>6} {'x limit':>8}   per round GB/s",
    ]
    for side, values in result["rates"].items():
        spread = " ".join(f"{v / 1e9:.2f}" for v in values)
        lines.append(f"{side:<14} {medians[side] / 1e9:6.2f} {medians[side] / limit:7.2f}x   {spread}")
    lines.append(f"limit = the slower fio figure, {limit / 1e9:.2f} GB/s; target for the copies >= 0.70x")
    # What the verification costs: every byte is read twice (the source, then the destination back
    # from the device) and written once. Done one after another at fio's rates, that is this rate;
    # a copy above it overlaps them.
    serial = 1 / (2 / medians["fio read"] + 1 / medians["fio write"])
    lines.append(
        f"a verified copy reads each byte twice and writes it once: one after another at fio's rates "
        f"{serial / 1e9:.2f} GB/s ({serial / limit:.2f}x)"
    )
    return "\n".join(lines)
