"""Hydra launcher plugins shipped with the pipeline; Hydra finds them in the `hydra_plugins` namespace."""
