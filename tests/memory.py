"""Re-export: the tests measure memory exactly as the benchmarks and the command line do."""
from mnv2_fused.measure import peak_cpu_bytes  # noqa: F401
