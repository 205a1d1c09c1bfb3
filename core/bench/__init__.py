"""Benchmarks: one harness (``harness.py``), one module per benchmark with ``run(quick: bool) -> dict``."""
