"""Deprecated: `python -m tools.diff` is `mlcache diff`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("diff", ["diff"])
