"""Reproducible benchmarks: ``python -m benchmarks.<name>``."""
