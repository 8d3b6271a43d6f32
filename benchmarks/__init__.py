"""`python -m benchmarks`: the service against the in-process limit of its own pipeline.

See docs/performance.md for the method and the latest figures.
"""
