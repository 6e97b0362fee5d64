"""Deprecated: `python -m tools.main` is `mlcache`, with the same arguments."""

from tools import alias

if __name__ == "__main__":
    alias("main", [])
