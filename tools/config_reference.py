"""Deprecated: `python -m tools.config_reference` is `mlcache config`, with the same flags."""

from tools import alias

if __name__ == "__main__":
    alias("config_reference", ["config"])
