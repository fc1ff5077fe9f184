"""Benchmarks, run as scripts (``python -m tests.benchmarks.<name>``), not collected by pytest."""
