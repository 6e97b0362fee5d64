"""Benchmark: a stack to placed pods with `mlcache rehearse`, phase by phase.

    mlcache bench rehearse [--runs N] [--stack dev --stack prod]

Runs the rehearsal CLI as a user would (a warm toolchain: scripts/build-engine done), N times
per stack, alternating stacks, and reads the phase boundaries from its own progress lines:
cluster start, preparing the stack, `pulumi up` with the real CLI, the scheduler
settling, and "other" (config check, imports, stopping the cluster at the end); the total is
the wall time of the whole command (target: <= 60 s). Prints every run and the medians side by side.
"""

from __future__ import annotations

import statistics
import sys

from mlcache.bench.rehearse import COLUMNS, TARGET_SECONDS, run
from mlcache.cli.contract import ArgumentParser, entry_point, positive_int


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="mlcache bench rehearse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=positive_int, default=3)
    parser.add_argument("--stack", action="append", help="stack to rehearse (repeatable; default dev and prod)")
    args = parser.parse_args(argv)
    stacks = args.stack or ["dev", "prod"]
    columns = [*COLUMNS, "other"]
    print(f"{'stack':<6} {'run':>3} {'exit':>4} " + " ".join(f"{c:>10}" for c in columns) + f" {'total':>8}")
    results: dict[str, list[tuple[float, dict[str, float]]]] = {stack: [] for stack in stacks}
    for index in range(1, args.runs + 1):
        for stack in stacks:
            print(f"bench rehearse: run {index}/{args.runs} of {stack} (about a minute)", file=sys.stderr, flush=True)
            code, total, phases = run(stack)
            phases["other"] = total - sum(phases.values())
            results[stack].append((total, phases))
            cells = " ".join(f"{phases[c]:>9.1f}s" for c in columns)
            print(f"{stack:<6} {index:>3} {code:>4} {cells} {total:>7.1f}s", flush=True)
    print()
    for stack, runs in results.items():
        median = {c: statistics.median(p[c] for _, p in runs) for c in columns}
        total = statistics.median(t for t, _ in runs)
        cells = " ".join(f"{median[c]:>9.1f}s" for c in columns)
        verdict = "met" if total <= TARGET_SECONDS else "NOT met"
        print(f"{stack:<6} {'med':>3} {'':>4} {cells} {total:>7.1f}s  (target <= {TARGET_SECONDS:.0f} s: {verdict})")
    return 0
