"""A stack to placed pods with `mlcache rehearse`, timed phase by phase from its own progress lines
(`mlcache bench rehearse`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from mlcache import CHECKOUT
from mlcache.errors import UsageError

TARGET_SECONDS = 60.0


# Progress lines of mlcache rehearse ("[ 12.3s] rehearse: <message>") that mark phase boundaries.
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
    """Seconds spent in each phase, from the stamps of mlcache rehearse's progress lines."""
    stamps = [(float(m.group(1)), m.group(2)) for m in map(STAMP.match, stderr.splitlines()) if m]
    at = {mark: next((t for t, message in stamps if message.startswith(text)), float("nan")) for mark, text in MARKS.items()}
    return {column: at[end] - at[begin] for column, (begin, end) in COLUMNS.items()}


def run(stack: str) -> tuple[int, float, dict[str, float]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlcache", "rehearse", "--stack", stack], cwd=CHECKOUT, capture_output=True, text=True
    )
    total = time.perf_counter() - started
    if done.returncode == 2:
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise UsageError(f"mlcache rehearse --stack {stack} could not run: {last[0]}")
    return done.returncode, total, phase_times(done.stderr)
