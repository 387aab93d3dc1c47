"""How alike a coder's decoder columns are: each feature's largest cosine similarity with any other feature.

A dictionary with near-duplicate features wastes width; SAEBench reports the mean of these maxima.
The [n_features x n_features] matrix of similarities is never formed: columns are compared a chunk
at a time, so the memory is `CHUNK_ELEMENTS` products whatever the width.
"""

import torch
import torch.nn.functional as F

from pipeline.coders.base import Coder

CHUNK_ELEMENTS = 1 << 24  # similarities computed at once (64 MiB in float32)


@torch.no_grad()
def max_cosine_per_feature(columns: torch.Tensor) -> torch.Tensor:
    """[n] float32: for each column of `columns` [dim, n], its largest cosine similarity with another column."""
    unit = F.normalize(columns.detach().float(), dim=0)
    n = unit.shape[1]
    best = torch.full((n,), float("nan"), device=unit.device)  # stays NaN for a lone feature
    if n < 2:
        return best
    chunk = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, n, chunk):
        sims = unit[:, start : start + chunk].T @ unit  # [chunk, n]
        rows = torch.arange(len(sims), device=unit.device)
        sims[rows, rows + start] = -float("inf")  # a column is not its own neighbour
        best[start : start + chunk] = sims.max(1).values
    return best


def decoder_similarity(coder: Coder) -> dict:
    """ "max_decoder_cosine_sim" (over every pair of features) and SAEBench's "average_max_decoder_cosine_sim"
    (the mean over features of each one's largest), over `coder.decoder_columns()`."""
    best = torch.cat([max_cosine_per_feature(columns) for columns in coder.decoder_columns()])
    return {
        "max_decoder_cosine_sim": best.max().item(),
        "average_max_decoder_cosine_sim": best.mean().item(),
    }
