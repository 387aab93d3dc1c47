"""Fit stage: optimal width, tokens and learning rate per budget, power laws in compute, report."""

from pipeline.fit.stage import read_results, run_fit, summary_table

__all__ = ["read_results", "run_fit", "summary_table"]
