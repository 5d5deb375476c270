"""Benchmarks, the README results and figures."""
