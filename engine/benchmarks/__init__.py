"""Benchmark subcommands for `engine/benchmark.py`; shared JSON record helpers in `record.py`."""
