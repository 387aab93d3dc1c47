"""Benchmarks: harvest, store codecs and training steps, each a `python -m pipeline.bench.<part>` command."""
