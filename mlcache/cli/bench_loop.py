"""The development loop's figures side by side: the unit suite, the real-engine suite and the
toolchain build, each beside its target.

    mlcache bench loop [--integration] [--build-log FILE] [--json]

The unit suite is timed as `./test unit` runs it (set-up and lint included: the loop a developer
waits on); `--integration` also times `./test integration` (minutes; needs the toolchain). The
build's per-step times come from scripts/build-engine's own log (every line it prints is appended
to $MLCACHE_ENGINE_CACHE/build-engine.log): the newest run that built something.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from mlcache.bench.loop import measure, table
from mlcache.cli.contract import ArgumentParser, entry_point
from mlcache.rehearsal.cluster import TOOLCHAIN_CACHE


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="mlcache bench loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--integration", action="store_true", help="also time ./test integration")
    parser.add_argument("--build-log", type=Path, default=TOOLCHAIN_CACHE / "build-engine.log", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args(argv)
    figures = measure(args.integration, args.build_log)
    load = os.getloadavg()[0]
    if args.json:
        sys.stdout.write(json.dumps({"loadAverage": load, "figures": [asdict(f) | {"ratio": f.ratio} for f in figures]}) + "\n")
    else:
        sys.stdout.write(table(figures) + f"\n{os.cpu_count()} cores, load average {load:.1f} at the end\n")
    return 0
