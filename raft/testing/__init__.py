"""Helpers for the test suite and the benchmarks; not used by the product and not part of the public API.

Shipped in the package (rather than kept under tests/) because the benchmark scripts use them too.
"""
