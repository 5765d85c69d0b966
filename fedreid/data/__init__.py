"""Data: readers of the real benchmarks, the synthetic-8 generator, samplers, transforms."""
