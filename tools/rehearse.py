"""Deprecated: `python -m tools.rehearse` is `mlcache rehearse`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("rehearse", ["rehearse"])
