"""Benchmarks that print their figures side by side in one run (ratios to a limit or a peer)."""
