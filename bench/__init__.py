"""Tether's benchmark harness: `python -m bench` (or `make bench`, `make bench-quick`).

It starts its own Redis and real worker processes, measures what Tether adds
per agent step over bare Celery hops on the same Redis, throughput with 1, 2
and 4 worker processes, runs in flight with a 1 s model, and the Redis cost of
a run, then prints a table and writes JSON and a PNG plot under bench/results/.
"""
