"""Deprecated: `python -m tools.drift` is `mlcache drift`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("drift", ["drift"])
