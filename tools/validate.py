"""Deprecated: `python -m tools.validate` is `mlcache validate`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("validate", ["validate"])
