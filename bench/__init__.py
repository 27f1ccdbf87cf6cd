"""Benchmark: the gRPC gateway (aiohttp and httpx upstream clients) against direct REST calls.

Run with `python -m bench`; see docs/benchmarks.md for what each number means.
"""
