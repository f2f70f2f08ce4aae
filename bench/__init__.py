"""Benchmarks of the expert gateway: `python -m bench.run [--quick]` (see bench/README.md)."""
