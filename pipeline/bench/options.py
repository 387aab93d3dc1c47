"""What the benchmark commands' options share, without torch: `python -m pipeline.bench` parses its options
before torch is imported, so that `--device cpu` can hide the GPU first."""

import argparse
from pathlib import Path


def at_least_one(text: str) -> int:
    """An argparse type for a count (steps, repeats, rows): a whole number of at least 1, else a one-line error."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return int(text)


def harvested(parser: argparse.ArgumentParser, option: str, path: Path, hook: str):
    """The completely harvested store at `path` (named by `option`) and its hook `hook` (default: its first),
    or the parser's one-line error (exit 2) before any work."""
    from pipeline.store.activation_store import ActivationStore, created  # torch, only once options are parsed

    if not created(path) or not (store := ActivationStore(path)).complete:
        parser.error(f"{option}: expected a completely harvested activation store, got {path}")
    hook = hook or store.hooks[0]
    if hook not in store.hooks:
        parser.error(f"--hook: expected one of the store's hooks ({', '.join(store.hooks)}), got {hook}")
    return store, hook
