"""Benchmarks: `python -m pipeline.bench all` runs every figure in one process (suite.py); the parts (harvest, store
codecs, training steps) and the recipe benchmark (recipes.py) also run alone as `python -m pipeline.bench.<part>`."""
