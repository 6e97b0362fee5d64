"""What the library raises for the command line to turn into its exit contract (mlcache/cli/contract.py),
and the one way to read a file a user names."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UsageError(Exception):
    """Bad usage or input: the message names what was wrong (exit 2)."""


class Unreachable(Exception):
    """The cluster cannot be read: no kubeconfig, refused, timed out, forbidden (exit 3)."""


def read_user_file(path: Path, limit: int) -> str:
    """A file a user names (fleet, report): UTF-8 text of a regular file of at most `limit` bytes.
    A FIFO or a device is refused at once (opened without waiting for a writer), never read to the end."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (regular files ignore the flag).
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UsageError(f"{path}: not a regular file")
            data = file.read(limit + 1)
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror or err})") from None
    if len(data) > limit:
        raise UsageError(f"{path}: larger than {limit // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None


def error_line(output: str, fallback: str = "no error message") -> str:
    """The line that says what failed in a command's output (a render, the Pulumi CLI): its last
    `error: ` line, without the prefix, among warnings and whatever else it printed; else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or [fallback])[-1]
