"""Benchmarks: ``bin/bench fastpath``, ... (each prints a table and can write JSON)."""
