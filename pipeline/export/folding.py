"""The export formats read a run's folded weights through `fold`, which lives with the coders so that the
circuit-tracing layer below the export folds them the same way."""

from pipeline.coders.folding import fold

__all__ = ["fold"]
