"""Deprecated: `python -m tools.bench_loop` is `mlcache bench loop`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("bench_loop", ["bench", "loop"])
