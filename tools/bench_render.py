"""Deprecated: `python -m tools.bench_render` is `mlcache bench render`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("bench_render", ["bench", "render"])
