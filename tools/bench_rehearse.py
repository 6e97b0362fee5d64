"""Deprecated: `python -m tools.bench_rehearse` is `mlcache bench rehearse`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("bench_rehearse", ["bench", "rehearse"])
