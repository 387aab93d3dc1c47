"""Histograms filled chunk by chunk, their range doubling as larger activations arrive: every positive activation
counted once, quantiles within 1/512 of the largest, and a feature that never fires all zeros."""

import torch

from pipeline.trace.histogram import BINS, Histograms


def test_chunked_histograms_count_every_activation_and_give_quantiles_within_a_bin():
    torch.manual_seed(0)
    acts = torch.rand(6000, 3) * torch.tensor([1.0, 40.0, 0.0])
    acts[acts < 0.2] = 0
    acts[:, 1] *= torch.linspace(0.01, 1, 6000)  # rising: the range doubles many times over the chunks
    chunked = Histograms(3)
    for chunk in acts.split(500):
        chunked.add(chunk)
    assert chunked.counts.sum(1).tolist() == (acts > 0).sum(0).tolist()
    shares = torch.tensor([0.01, 0.25, 0.5, 0.9, 0.99])
    for feature in (0, 1):
        positive = acts[:, feature][acts[:, feature] > 0]
        top = positive.max().item()
        assert top < chunked.top[feature] <= 2 * top * (1 + 1e-6)
        exact = positive.quantile(shares).tolist()
        got = chunked.quantiles(feature, shares)
        assert max(abs(a - b) for a, b in zip(got, exact, strict=True)) <= 2 * top / BINS
        coarse = chunked.coarse(feature, 10, top)
        assert sum(coarse) == len(positive)
        assert abs(coarse[-1] - ((positive >= 0.9 * top) & (positive <= top)).sum().item()) <= len(positive) * 0.02
    assert chunked.quantiles(2, shares) == [0.0] * 5 and chunked.coarse(2, 10, 0.0) == [0.0] * 10
