"""Deprecated: `python -m tools.figures` is `mlcache figures`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("figures", ["figures"])
