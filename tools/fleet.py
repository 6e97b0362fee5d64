"""Deprecated: `python -m tools.fleet` is `mlcache fleet`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("fleet", ["fleet"])
