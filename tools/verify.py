"""Deprecated: `python -m tools.verify` is `mlcache verify`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("verify", ["verify"])
