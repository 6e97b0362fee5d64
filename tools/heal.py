"""Deprecated: `python -m tools.heal` is `mlcache heal`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("heal", ["heal"])
