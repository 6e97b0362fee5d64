"""Benchmarks: storage, shard loading, cold start, the cache copy, and the development loop.

mlcache bench report RESULT.json [MORE.json]... [--plot FILE.png]
    fio JSON (also as `kubectl logs` prints it, with other lines around it): read MB/s,
    IOPS, mean and p99 completion latency per result; each one's ratio to the first.
mlcache bench shards --dir DIR [--count 8] [--size 1G] [--readers 8] [--rounds 3]
    writes synthetic safetensors shards (kept if present), then with the same page-cache
    state (files evicted before each run) loads them and runs fio's sequential read over
    the same files; prints both throughputs and their ratio.
mlcache bench coldstart --dir DIR [--count 8] [--size 512M] [--readers 8] [--rounds 5] [--ranks 1] [--budget SIZE] [--json]
    fio, the default loader (safetensors safe_open + get_tensor), prewarm + that loader and the
    shard reader on the same shards (DIR's own, or synthetic ones written into an empty DIR),
    alternating rounds, evicted before each run: times, GB/s, ratios to fio and to the limit
    (the slower of fio and the loader from the page cache); --budget adds the loader alone and the
    pod's bounded prewarm beside it in a memory cgroup of SIZE (page cache included); --json prints the
    figures (docs/coldstart.md).
mlcache bench prewarm --dir DIR [--readers 2,4,8,16] [--chunks 4M,16M,64M] [--rounds 3] [--json]
    the prewarm beside the loader (prewarm|loader, as the pod runs it) for each readers x chunk
    size, each against the limit of its round (docs/coldstart.md: how the defaults were chosen).
mlcache bench copy --dir DIR [--files 2] [--size 1G] [--streams 4] [--rounds 3]
    workloads/cache_copy.py local and send|receive against fio read and write.
mlcache bench loop [--integration] [--build-log FILE] [--json]
    the development loop: unit suite, real-engine suite, toolchain build steps, beside targets.
mlcache bench render [--runs N] [--stack dev] [--baseline DIR]
    the offline render against the import floor.
mlcache bench rehearse [--runs N] [--stack dev --stack prod]
    a stack to placed pods with `mlcache rehearse`, phase by phase.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from mlcache.bench import copy as copy_bench
from mlcache.bench import prewarm as prewarm_bench
from mlcache.bench.storage import benchmark_errors, load_result, plot, report, shard_size, shards_benchmark, shards_report
from mlcache.cli.contract import ArgumentParser, UsageError, entry_point, positive_int
from mlcache.cli.main import prog
from workloads import coldstart, prewarm, shard_bench

# Benchmarks with options of their own: `mlcache bench NAME ...` hands the rest of the line to them.
# Imported when asked for: the rehearsal's (the kubernetes client) would cost every other bench a second.
DELEGATED = {
    "loop": ("mlcache.cli.bench_loop", "the development loop's figures beside their targets"),
    "render": ("mlcache.cli.bench_render", "the offline render against the import floor"),
    "rehearse": ("mlcache.cli.bench_rehearse", "a stack to placed pods on the rehearsal cluster, phase by phase"),
}


@entry_point
def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] in DELEGATED:
        return importlib.import_module(DELEGATED[args_in[0]][0]).main(args_in[1:])
    parser = ArgumentParser(prog=prog("mlcache.cli.bench"), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, summary) in DELEGATED.items():
        commands.add_parser(name, help=f"{summary} (mlcache bench {name} --help)", add_help=False)
    rep = commands.add_parser("report", help="summarise fio JSON results")
    rep.add_argument("results", nargs="+", type=Path)
    rep.add_argument("--plot", type=Path, help="write a comparison chart (PNG)")
    shards = commands.add_parser("shards", help="shard loading vs fio on the same files")
    shards.add_argument("--dir", type=Path, required=True)
    shards.add_argument("--count", type=positive_int, default=8)
    shards.add_argument("--size", type=shard_size, default="1G")
    shards.add_argument("--readers", type=positive_int, default=8)
    shards.add_argument("--rounds", type=positive_int, default=3, help="alternating (load, fio) rounds; medians reported")
    cold = commands.add_parser("coldstart", help="model shards to process memory: fio, loader, prewarm+loader, shard reader")
    cold.add_argument("--dir", type=Path, required=True)
    cold.add_argument(
        "--count", type=positive_int, default=8, help="synthetic shards, written only into a DIR without *.safetensors"
    )
    cold.add_argument("--size", type=shard_size, default="512M")
    cold.add_argument("--readers", type=positive_int, default=8)
    cold.add_argument(
        "--rounds", type=positive_int, default=coldstart.DEFAULT_ROUNDS, help="rounds of every side, order rotating; medians"
    )
    cold.add_argument("--ranks", type=positive_int, default=1, help="loader processes at once, as ranks on one node do")
    cold.add_argument(
        "--budget", type=shard_size, help="memory cgroup limit (page cache included) for the rows in budget, below the model"
    )
    cold.add_argument("--json", action="store_true", help="print the figures as JSON (the report goes to stderr)")
    sweep = commands.add_parser("prewarm", help="prewarm|loader for each readers x chunk size, against the limit")
    sweep.add_argument("--dir", type=Path, required=True)
    sweep.add_argument(
        "--count", type=positive_int, default=8, help="synthetic shards, written only into a DIR without *.safetensors"
    )
    sweep.add_argument("--size", type=shard_size, default="512M")
    sweep.add_argument("--readers", type=_list_of(positive_int), default=prewarm_bench.READERS, help="e.g. 2,4,8,16")
    sweep.add_argument("--chunks", type=_list_of(_chunk), default=prewarm_bench.CHUNKS, help="e.g. 4M,16M,64M")
    sweep.add_argument(
        "--rounds", type=positive_int, default=prewarm_bench.DEFAULT_ROUNDS, help="rounds, order rotating; medians"
    )
    sweep.add_argument("--json", action="store_true", help="print the figures as JSON (the report goes to stderr)")
    copy = commands.add_parser("copy", help="cache_copy.py local and send|receive vs fio read and write")
    copy.add_argument("--dir", type=Path, required=True, help="where the source cache and the copies go")
    copy.add_argument("--files", type=positive_int, default=2, help="large incompressible files")
    copy.add_argument("--size", type=shard_size, default="1G", help="size of each large file")
    copy.add_argument("--streams", type=positive_int, default=4)
    copy.add_argument("--rounds", type=positive_int, default=3, help="rounds of every side, order rotating; medians")
    args = parser.parse_args(args_in)
    if args.command in ("shards", "coldstart", "copy", "prewarm"):
        _needs(["numpy", "safetensors"], f"mlcache bench {args.command} writes and loads safetensors shards")
    if args.command == "report" and args.plot:
        _needs(["matplotlib"], "--plot draws the chart")
    if args.command == "copy":
        if not shutil.which("fio"):
            raise UsageError("fio is not installed (Debian: apt-get install fio)")
        with benchmark_errors(args.dir):
            result = copy_bench.benchmark(
                args.dir,
                args.files,
                shard_bench.parse_size(args.size),
                args.streams,
                args.rounds,
                lambda line: print(f"bench copy: {line}", file=sys.stderr, flush=True),
            )
        print(copy_bench.report(result))
        return 0
    if args.command == "prewarm":
        if not shutil.which("fio"):
            raise UsageError("fio is not installed (Debian: apt-get install fio): the limit is made of its figure")
        with benchmark_errors(args.dir):
            result = prewarm_bench.sweep(args.dir, args.readers, args.chunks, args.rounds, args.count, args.size)
        _print(prewarm_bench.report(result), result, args.json)
        return 0
    if args.command == "coldstart":
        with benchmark_errors(args.dir):
            budget = shard_bench.parse_size(args.budget) if args.budget else None
            result = coldstart.benchmark(args.dir, args.readers, args.rounds, args.count, args.size, args.ranks, budget)
        _print(coldstart.report(result), result, args.json)
        return 0
    if args.command == "report":
        try:
            results = [load_result(path) for path in args.results]
        except (OSError, ValueError, RecursionError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(report(results))
        if args.plot:
            try:
                plot(results, args.plot)
            except (OSError, ValueError) as err:  # unwritable, or a format matplotlib does not know
                raise UsageError(f"--plot {args.plot}: cannot write the chart: {err}") from None
            print(f"chart: {args.plot}", file=sys.stderr)
        return 0
    with benchmark_errors(args.dir):
        result = shards_benchmark(args.dir, args.count, args.size, args.readers, args.rounds)
    print(shards_report(result))
    return 0


def _print(report: str, result: dict, as_json: bool) -> None:
    """The report on stdout; with --json the figures there instead, and the report on stderr."""
    if as_json:
        print(report, file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(report)


def _chunk(text: str) -> int:
    """argparse type of a prewarm chunk, one read each: whole MiB from 1M (smaller is millions of reads
    per GB) to 1G (each reader holds one chunk in memory)."""
    size = shard_bench.parse_size(shard_size(text))
    if size < 1 << 20 or size > 1 << 30 or size % (1 << 20):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a chunk is whole MiB from 1M to 1G (the prewarm reads {prewarm.CHUNK >> 20}M at a time)"
        )
    return size


def _list_of(item: Callable[[str], int]) -> Callable[[str], tuple[int, ...]]:
    """argparse type of a comma-separated list, each item checked by `item`, none twice."""

    def parse(text: str) -> tuple[int, ...]:
        values = tuple(item(part) for part in text.split(","))
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
        return values

    return parse


def _needs(modules: list[str], what: str) -> None:
    """One usage line when a module only the test environment installs is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"{what}: it needs {' and '.join(missing)}, which ./run's runtime environment leaves out; "
            "install the test environment with scripts/setup (./test runs it)"
        )
