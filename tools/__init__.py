"""Deprecated aliases: `python -m tools.<name>` runs the matching `mlcache` command with the same flags.

Users' CI workflows call these; each prints one note on stderr naming the command to use instead.
The code lives in the mlcache package; nothing new goes here.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from mlcache.cli.main import main


def alias(old: str, command: list[str]) -> NoReturn:
    """Run `mlcache COMMAND...` with this process's arguments, after a deprecation note."""
    print(f"note: `python -m tools.{old}` is deprecated; use `{' '.join(['mlcache', *command])}` (same flags)", file=sys.stderr)
    sys.exit(main([*command, *sys.argv[1:]]))
