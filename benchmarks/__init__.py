"""corral's benchmark suite (run on demand, never by pytest): ``python -m benchmarks run --size small``."""
