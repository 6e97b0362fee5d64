"""Storage benchmarks: fio JSON results summarised side by side, and shard loading against fio's
sequential read on the same files (`mlcache bench report|shards`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlcache.errors import UsageError, read_user_file
from workloads import coldstart, shard_bench

# A fio report (or `kubectl logs` around one) is tens of KiB: a bigger file is not one.
MAX_REPORT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FioResult:
    label: str
    job: str
    fio_version: str
    read_bytes_per_s: float
    iops: float
    mean_latency_ms: float
    p99_latency_ms: float

    @property
    def read_mb_per_s(self) -> float:
        return self.read_bytes_per_s / 1e6


def extract_json(text: str) -> dict:
    """The fio JSON document in `text`: lines before the first `{` and after the last `}` dropped."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no fio JSON found (run fio with --output-format=json)")
    return json.loads(text[start : end + 1])


def parse_fio(document: dict, label: str) -> FioResult:
    """Aggregate the read side of every job (one with --group_reporting, else summed)."""
    try:
        result = _aggregate(document, label)
    except (KeyError, TypeError, AttributeError) as err:  # JSON, but not the shape fio writes
        raise ValueError(f"{label}: not fio's JSON output ({type(err).__name__}: {err})") from None
    if not result.read_bytes_per_s > 0:
        raise ValueError(f"{label}: read bandwidth is {result.read_bytes_per_s} B/s (no time measured: run longer)")
    return result


def _aggregate(document: dict, label: str) -> FioResult:
    jobs = [job for job in document.get("jobs", []) if job.get("read", {}).get("io_bytes", 0) > 0]
    if not jobs:
        raise ValueError(f"{label}: no job read any data")
    reads = [job["read"] for job in jobs]
    total_ios = sum(r.get("total_ios", 0) for r in reads) or len(reads)
    mean_ns = sum(r["clat_ns"]["mean"] * r.get("total_ios", 1) for r in reads) / total_ios
    p99_ns = max(r["clat_ns"].get("percentile", {}).get("99.000000", 0) for r in reads)
    return FioResult(
        label=label,
        job=",".join(sorted({job["jobname"] for job in jobs})),
        fio_version=document.get("fio version", "?"),
        read_bytes_per_s=sum(r["bw_bytes"] for r in reads),
        iops=sum(r["iops"] for r in reads),
        mean_latency_ms=mean_ns / 1e6,
        p99_latency_ms=p99_ns / 1e6,
    )


def load_result(path: Path) -> FioResult:
    return parse_fio(extract_json(read_user_file(path, MAX_REPORT_BYTES)), path.stem)


def report(results: list[FioResult]) -> str:
    header = f"{'result':<24} {'job':<12} {'read MB/s':>10} {'IOPS':>9} {'mean ms':>9} {'p99 ms':>9}"
    lines = [header + (f" {'vs first':>9}" if len(results) > 1 else ""), "-" * (len(header) + 10)]
    for result in results:
        line = (
            f"{result.label:<24} {result.job:<12} {result.read_mb_per_s:>10.1f} {result.iops:>9.1f} "
            f"{result.mean_latency_ms:>9.3f} {result.p99_latency_ms:>9.3f}"
        )
        if len(results) > 1:
            line += f" {result.read_bytes_per_s / results[0].read_bytes_per_s:>8.2f}x"
        lines.append(line)
    versions = sorted({r.fio_version for r in results})
    lines.append(f"({', '.join(versions)})")
    return "\n".join(lines)


def plot(results: list[FioResult], path: Path) -> None:
    import matplotlib  # noqa: PLC0415  (only --plot needs it, and it is slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = [r.label for r in results]
    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    bars = throughput.bar(labels, [r.read_mb_per_s for r in results], color="#3b7dd8")
    throughput.set_title("read throughput (MB/s, higher is better)")
    throughput.set_ylim(0, max(r.read_mb_per_s for r in results) * 1.2)  # room for the labels
    for bar, result in zip(bars, results, strict=True):
        ratio = result.read_bytes_per_s / results[0].read_bytes_per_s
        top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
        throughput.annotate(f"{result.read_mb_per_s:.0f}\n{ratio:.2f}x", top, ha="center", va="bottom", fontsize=8)
    x = range(len(results))
    latency.bar([i - 0.2 for i in x], [r.mean_latency_ms for r in results], width=0.4, label="mean")
    latency.bar([i + 0.2 for i in x], [r.p99_latency_ms for r in results], width=0.4, label="p99")
    latency.set_xticks(list(x), labels)
    latency.set_title("completion latency (ms, lower is better)")
    latency.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fio_over(paths: list[Path], readers: int) -> FioResult:
    """fio's buffered sequential read of exactly these files, `readers` jobs at a time."""
    if not shutil.which("fio"):
        raise SystemExit("mlcache bench: fio is not installed (Debian: apt-get install fio)")
    args = ["fio", "--output-format=json", "--group_reporting"]
    groups = [paths[i::readers] for i in range(min(readers, len(paths)))]
    for index, group in enumerate(groups):
        args += [
            f"--name=reader{index}",
            "--rw=read",
            "--bs=4M",
            "--ioengine=psync",
            "--file_service_type=sequential",
            "--invalidate=1",
            "--filename=" + ":".join(str(p).replace(":", "\\:") for p in group),
        ]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return parse_fio(extract_json(done.stdout), "fio seqread")


def shards_benchmark(directory: Path, count: int, size: str, readers: int, rounds: int) -> dict:
    """`rounds` of (shard load, fio) over the same files, evicted before every run; the order
    alternates so neither side profits from running second (a VM's host cache, say). Medians."""
    paths = shard_bench.write_shards(directory, count, shard_bench.parse_size(size))
    loads, fios = [], []
    for index in range(rounds):
        for side in ("load", "fio") if index % 2 == 0 else ("fio", "load"):
            shard_bench.evict(paths)
            if side == "load":
                loads.append(shard_bench.load_shards(directory, readers))
            else:
                fios.append(fio_over(paths, readers))
    loaded = sorted(loads, key=lambda r: r["gb_per_s"])[len(loads) // 2]
    fio = sorted(fios, key=lambda r: r.read_bytes_per_s)[len(fios) // 2]
    return {
        "shard_load": loaded,
        "fio": fio,
        "ratio": loaded["total_bytes"] / loaded["wall_seconds"] / fio.read_bytes_per_s,
        "rounds": rounds,
        "all_ratios": [load["gb_per_s"] * 1e9 / f.read_bytes_per_s for load, f in zip(loads, fios, strict=True)],
    }


def shards_report(result: dict) -> str:
    loaded, fio = result["shard_load"], result["fio"]
    return "\n".join(
        [
            shard_bench.summary(loaded),
            f"fio seqread over the same files: {fio.read_bytes_per_s / 1e9:.2f} GB/s ({fio.fio_version})",
            f"shard loading / fio = {result['ratio']:.2f}x (medians of {result['rounds']} rounds; target >= 0.90x); "
            "per round: " + " ".join(f"{r:.2f}x" for r in result["all_ratios"]),
        ]
    )


def shard_size(text: str) -> str:
    """argparse type of --size: fio's size syntax, checked up front."""
    try:
        shard_bench.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


@contextmanager
def benchmark_errors(directory: Path) -> Iterator[None]:
    """A benchmark's failures as one usage line: the directory, or fio's own message."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"--dir {directory}: {err.strerror or err}") from None
    except subprocess.CalledProcessError as err:
        raise UsageError(f"fio failed: {(err.stderr or '').strip() or err}") from None
    except coldstart.RunFailed as err:
        raise UsageError(f"--dir {directory}: {err}") from None
