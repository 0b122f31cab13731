"""The benchmark harness: `make bench` runs :mod:`bench.run`."""
