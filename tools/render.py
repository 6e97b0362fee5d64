"""Deprecated: `python -m tools.render` is `mlcache render`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("render", ["render"])
