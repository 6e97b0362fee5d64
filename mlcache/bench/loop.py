"""The development loop's figures: the test suites timed as `./test` runs them, and the toolchain
build's steps from scripts/build-engine's log, each beside its target (`mlcache bench loop`).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlcache import CHECKOUT
from mlcache.errors import UsageError

# The loop's targets (seconds): the unit suite; the real-engine suite (warm CI); the cold toolchain
# build, which with the real-engine suite must fit a cold CI run of 40 minutes.
TARGETS = {"unit": 30, "integration": 10 * 60, "build": 30 * 60}


@dataclass
class Figure:
    name: str
    wall_s: float
    cpu_s: float | None
    target_s: float | None
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        return self.wall_s / self.target_s if self.target_s else None


def timed(command: list[str], name: str, target: float | None, progress: str) -> Figure:
    print(f"bench_loop: {progress}", file=sys.stderr, flush=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, cwd=CHECKOUT, capture_output=True, text=True, check=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        last = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"`{' '.join(command)}` failed (exit {result.returncode}): {last[0]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = [line for line in result.stdout.splitlines() if re.search(r"\d+ passed", line)]
    return Figure(name, wall, cpu, target, summary[-1].strip("= ") if summary else "")


def build_figures(log: Path) -> list[Figure]:
    """Per-step times of the newest scripts/build-engine run that built something."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--build-log {log}: cannot read it ({err})") from None
    runs: list[list[str]] = [[]]
    for line in lines:
        runs[-1].append(line)
        if "toolchain ready in" in line:
            runs.append([])
    built = [run for run in runs if any("built in" in line for line in run)]
    if not built:
        return []
    figures = [
        Figure(f"build {m[1]} ({m[2]})", float(m[3]), None, None)
        for m in (re.search(r"\] (\S+) (\S+): built in (\d+) s", line) for line in built[-1])
        if m
    ]
    # The whole toolchain once per lane count (MLCACHE_BUILD_LANES): the newest run with that count
    # that built something, so that 2 and 3 lanes stand side by side.
    wholes: dict[str, float] = {}
    for run in built:
        for m in (re.search(r"toolchain ready in .* \((\d+) s(?:, (\d) lanes)?\)", line) for line in run):
            if m:
                wholes[m[2] or "2"] = float(m[1])  # logs written before the lane count was printed ran two
    figures += [Figure(f"build, whole toolchain ({n} lanes)", t, None, TARGETS["build"]) for n, t in sorted(wholes.items())]
    return figures


def table(figures: list[Figure]) -> str:
    rows = ["| figure | wall | CPU | target | wall / target | |", "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        cpu = f"{f.cpu_s:.0f} s" if f.cpu_s is not None else ""
        target = f"{f.target_s:.0f} s" if f.target_s else ""
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        rows.append(f"| {f.name} | {f.wall_s:.0f} s | {cpu} | {target} | {ratio} | {f.detail} |")
    return "\n".join(rows) + "\n"


def measure(integration: bool, build_log: Path) -> list[Figure]:
    build = build_figures(build_log)  # read first: a bad log is refused before minutes of tests
    figures = [timed(["./test", "unit"], "./test unit", TARGETS["unit"], "timing ./test unit (about half a minute on 2 cores)")]
    if integration:
        progress = "timing ./test integration (several minutes; needs scripts/build-engine's toolchain)"
        figures.append(timed(["./test", "integration"], "./test integration", TARGETS["integration"], progress))
    return figures + build
