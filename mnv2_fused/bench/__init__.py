"""Tooling for the command line and the benchmarks: models with random weights, the providers
compared, and the latency and memory measurements. Not imported by the library itself."""
