"""Deprecated: `python -m tools.snapshots` is `mlcache snapshots`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("snapshots", ["snapshots"])
