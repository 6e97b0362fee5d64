"""Benchmark: a stack to placed pods with `mlcache rehearse`, phase by phase.

    python -m tools.bench_rehearse [--runs N] [--stack dev --stack prod]

Runs the rehearsal CLI as a user would (a warm toolchain: scripts/build-engine done), N times
per stack, alternating stacks, and reads the phase boundaries from its own progress lines:
cluster start, preparing the stack, `pulumi up` through the Automation API, the scheduler
settling, and "other" (config check, imports, stopping the cluster at the end); the total is
the wall time of the whole command (target: <= 60 s). Prints every run and the medians side by side.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from tools import CHECKOUT

TARGET_SECONDS = 60.0
# Progress lines of tools.rehearse ("[ 12.3s] rehearse: <message>") that mark phase boundaries.
MARKS = {
    "begin": "starting the rehearsal cluster",
    "cluster": "cluster up:",
    "up": "pulumi up --stack",
    "deployed": "pulumi up done",
    "settled": "settled in",
}
COLUMNS = {
    "cluster": ("begin", "cluster"),
    "prepare": ("cluster", "up"),  # provider plugin, program copy, stack init and config
    "pulumi up": ("up", "deployed"),
    "settle": ("deployed", "settled"),
}
STAMP = re.compile(r"^\[\s*([\d.]+)s\] rehearse: (.*)$")


def phase_times(stderr: str) -> dict[str, float]:
    """Seconds spent in each phase, from the stamps of tools.rehearse's progress lines."""
    stamps = [(float(m.group(1)), m.group(2)) for m in map(STAMP.match, stderr.splitlines()) if m]
    at = {mark: next((t for t, message in stamps if message.startswith(text)), float("nan")) for mark, text in MARKS.items()}
    return {column: at[end] - at[begin] for column, (begin, end) in COLUMNS.items()}


def run(stack: str) -> tuple[int, float, dict[str, float]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tools.rehearse", "--stack", stack], cwd=CHECKOUT, capture_output=True, text=True
    )
    total = time.perf_counter() - started
    if done.returncode == 2:
        raise SystemExit(f"tools.rehearse --stack {stack} could not run: {done.stderr.strip().splitlines()[-1]}")
    return done.returncode, total, phase_times(done.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_rehearse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stack", action="append", help="stack to rehearse (repeatable; default dev and prod)")
    args = parser.parse_args(argv)
    stacks = args.stack or ["dev", "prod"]
    columns = [*COLUMNS, "other"]
    print(f"{'stack':<6} {'run':>3} {'exit':>4} " + " ".join(f"{c:>10}" for c in columns) + f" {'total':>8}")
    results: dict[str, list[tuple[float, dict[str, float]]]] = {stack: [] for stack in stacks}
    for index in range(1, args.runs + 1):
        for stack in stacks:
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


if __name__ == "__main__":
    sys.exit(main())
