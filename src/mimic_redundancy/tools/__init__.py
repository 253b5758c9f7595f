"""Entry points outside the DAG: the benchmarks (make bench) and the GPU check (make gpu-check)."""
