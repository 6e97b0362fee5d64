"""`mlcache bench prewarm`: the prewarm's readers and chunk size, decided by measurement.

Each cell of the grid (readers x chunk) runs `prewarm|loader` as the pod does (the prewarm a
process of its own, started with the loader; workloads/coldstart.py), and each round also times
the two figures the limit is made of: fio's read of the shards and the loader from the page
cache. Rounds rotate the order; the shards are evicted from the page cache before every run. A
cell's figure is its time over the limit of its own round (median over rounds), the figure
`mlcache bench coldstart` reports for the pod's defaults.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from mlcache.program.schema import section_defaults
from mlcache.program.settings import JobSettings
from workloads import coldstart, prewarm, shard_bench

READERS = (2, 4, 8, 16)
CHUNKS = (4 << 20, 16 << 20, 64 << 20)
DEFAULT_READERS: int = section_defaults(JobSettings)["prewarmReaders"]  # marked in the table with prewarm.CHUNK
DEFAULT_ROUNDS = 3


def _cell(readers: int, chunk: int) -> str:
    return f"{readers} x {chunk >> 20}M"


def sweep(directory: Path, readers: tuple[int, ...], chunks: tuple[int, ...], rounds: int, count: int, size: str) -> dict:
    """`rounds` rounds of fio, the warm loader and every cell; chunks are whole MiB, no value twice."""
    paths = shard_bench.shard_paths(directory) or shard_bench.write_shards(directory, count, shard_bench.parse_size(size))
    cells = {_cell(r, c): (r, c) for r in readers for c in chunks}
    sides = [coldstart.FIO, coldstart.WARM_LOADER_PART, *cells]
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    left_resident = 0
    for index in range(rounds):
        for side in sides[index % len(sides) :] + sides[: index % len(sides)]:
            shard_bench.evict(paths)
            left_resident = max(left_resident, sum(coldstart.resident_bytes(p) for p in paths))
            if side == coldstart.FIO:
                wall = coldstart.fio_seconds(paths, DEFAULT_READERS)[0]
            elif side == coldstart.WARM_LOADER_PART:
                wall = coldstart.prewarm_then_load(paths, DEFAULT_READERS)[1].wall  # the loading part
            else:
                cell_readers, chunk = cells[side]
                with coldstart.Clock() as clock:
                    coldstart.prewarm_alongside_load(paths, cell_readers, chunk=chunk)
                wall = clock.wall
            seconds[side].append(wall)
            print(f"bench prewarm: round {index + 1}/{rounds}: {side} {wall:.2f} s", file=sys.stderr, flush=True)
    limit = coldstart.limit_seconds(seconds[coldstart.FIO], seconds[coldstart.WARM_LOADER_PART])
    return {
        **coldstart.result_head("prewarm", directory, paths),
        "rounds": rounds,
        "cells": [{"readers": r, "chunk_bytes": c, "seconds": seconds[label]} for label, (r, c) in cells.items()],
        "seconds": {coldstart.FIO: seconds[coldstart.FIO], coldstart.WARM_LOADER_PART: seconds[coldstart.WARM_LOADER_PART]},
        "limit_seconds": limit,
        "resident_after_evict_bytes": left_resident,
    }


def report(result: dict) -> str:
    limit = result["limit_seconds"]
    lines = [
        f"prewarm: {result['shards']} shards, {result['total_bytes'] / 1e9:.2f} GB in {result['directory']}, "
        f"{result['rounds']} rounds (order rotating), page cache evicted before each run "
        f"(at most {result['resident_after_evict_bytes']} bytes left resident)",
        f"limit per round = max(fio {' '.join(f'{s:.2f}' for s in result['seconds'][coldstart.FIO])}, "
        f"loader from page cache {' '.join(f'{s:.2f}' for s in result['seconds'][coldstart.WARM_LOADER_PART])}) s",
        f"{'prewarm|loader':<16} {'median s':>8} {'min-max s':>13} {'time/limit':>10}   per round",
    ]
    for cell in result["cells"]:
        times = cell["seconds"]
        ratios = [t / bound for t, bound in zip(times, limit, strict=True)]
        default = "   <- the pod's default" if (cell["readers"], cell["chunk_bytes"]) == (DEFAULT_READERS, prewarm.CHUNK) else ""
        lines.append(
            f"{_cell(cell['readers'], cell['chunk_bytes']):<16} {statistics.median(times):>8.2f} "
            f"{min(times):>6.2f}-{max(times):<6.2f} {statistics.median(ratios):>9.2f}x   "
            f"{' '.join(f'{r:.2f}' for r in ratios)}{default}"
        )
    return "\n".join(lines)
