"""`make bench` / `python -m bench`: the guard's benchmarks against real processes and a private Redis.

One module per measurement (ceiling, decode, ingest, decision, health, recovery); `report` turns the
results into `bench/results/latest.json` and `latest.md`. `BENCH_QUICK=1` shortens every window.
"""
