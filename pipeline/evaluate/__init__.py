"""Evaluating a coder: reconstruction and sparsity metrics on held-out rows, and splicing it into the model."""
