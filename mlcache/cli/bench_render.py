"""Benchmark: the offline render against the import floor, side by side in one run.

    mlcache bench render [--runs N] [--stack dev] [--baseline DIR]

Prints the median wall time of `mlcache render --stack STACK` (what `mlcache render` runs) and of a bare
interpreter importing `pulumi` and the pulumi_kubernetes modules the program uses, and the
ratio (target: <= 1.3). Runs alternate so machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from mlcache.bench.render import FLOOR, TARGET_RATIO, timed
from mlcache.cli.contract import ArgumentParser, entry_point, positive_int


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="mlcache bench render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=positive_int, default=9)
    parser.add_argument("--stack", default="dev")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also time the render of another checkout (e.g. `git worktree add DIR main`) with its own tools, "
        "in the same rotation: whether a change slows the render, independent of machine load",
    )
    args = parser.parse_args(argv)
    render = [sys.executable, "-m", "mlcache", "render", "--stack", args.stack]
    floor = [sys.executable, "-c", FLOOR]
    timed(render), timed(floor)  # warm the file cache and bytecode
    render_times, floor_times, baseline_times = [], [], []
    for index in range(args.runs):
        print(f"bench render: run {index + 1}/{args.runs}", file=sys.stderr, flush=True)
        render_times.append(timed(render))
        floor_times.append(timed(floor))
        if args.baseline:
            baseline_times.append(timed(render, args.baseline))
    render_median, floor_median = statistics.median(render_times), statistics.median(floor_times)
    ratio = render_median / floor_median
    print(f"runs: {args.runs} each, alternating")
    print(f"render ({' '.join(render[1:])}): median {render_median:.3f} s")
    print(f"import floor (pulumi + pulumi_kubernetes core/batch/storage v1): median {floor_median:.3f} s")
    print(f"ratio: {ratio:.2f}x (target <= {TARGET_RATIO}x): {'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    if baseline_times:
        baseline_median = statistics.median(baseline_times)
        print(
            f"baseline render in {args.baseline}: median {baseline_median:.3f} s; this checkout / baseline: "
            f"{render_median / baseline_median:.2f}x"
        )
    return 0
