"""The offline render timed against the import floor (`mlcache bench render`)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from mlcache import CHECKOUT
from mlcache.errors import UsageError

FLOOR = "import pulumi, pulumi_kubernetes.core.v1, pulumi_kubernetes.batch.v1, pulumi_kubernetes.storage.v1"


TARGET_RATIO = 1.3


def timed(command: list[str], cwd: Path = CHECKOUT) -> float:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as err:  # a --baseline that is not a directory
        raise UsageError(f"cannot run `{' '.join(command[1:])}` in {cwd}: {err.strerror}") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise UsageError(f"`{' '.join(command[1:])}` in {cwd} failed: {last[0].removeprefix('error: ')}")
    return time.perf_counter() - start
