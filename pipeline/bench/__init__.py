"""Benchmarks: `python -m pipeline.bench all` runs every figure in one process (suite.py); the parts (harvest, store
codecs, training steps) also run alone as `python -m pipeline.bench.<part>`."""
