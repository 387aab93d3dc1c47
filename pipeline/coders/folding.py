"""A run's coder with its training scales folded into the weights (`pipeline.coders.raw`), as every format reads it."""

import torch

from pipeline.coders.base import Coder
from pipeline.coders.raw import RawWeights


@torch.no_grad()
def fold(coder: Coder, source: dict) -> RawWeights:
    """`coder`'s weights on raw activations, with the scales `source` (its `source.json`) records."""
    scales = source["scales"]
    s_in = [scales[name] for name in source["inputs"]]
    s_out = [scales[name] for name in source["targets"]]
    return coder.eval().raw_weights(s_in, s_out).plain()
