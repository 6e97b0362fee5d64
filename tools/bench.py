"""Deprecated: `python -m tools.bench` is `mlcache bench`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("bench", ["bench"])
