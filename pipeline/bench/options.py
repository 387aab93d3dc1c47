"""What the benchmark commands' options share, without torch: `python -m pipeline.bench` parses its options
before torch is imported, so that `--device cpu` can hide the GPU first."""

import argparse


def step_count(text: str) -> int:
    """An argparse type for `--steps`: a whole number of at least 1, else argparse's one-line error."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return int(text)
