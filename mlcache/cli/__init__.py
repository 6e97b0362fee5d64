"""The `mlcache` command: one module per subcommand, and the exit contract they share (contract.py)."""
