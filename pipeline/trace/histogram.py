"""Histograms of many features' positive activations, filled chunk by chunk without knowing their range first.

Each feature's `BINS` equal bins span [0, top); a value at or above `top` doubles `top` (merging
neighbouring bins in pairs) until it fits, so counts are never rebinned by guess and the bins span
between the largest value seen and twice it: at least `BINS / 2` bins below the maximum.
Quantiles are then exact to within one bin, 1/512 of the largest value or better.
"""

import math

import torch

BINS = 1024


class Histograms:
    def __init__(self, n_features: int):
        self.counts = torch.zeros(n_features, BINS, dtype=torch.int64)
        self.top = torch.zeros(
            n_features, dtype=torch.float64
        )  # upper edge of each feature's last bin; 0 until it first fires

    def add(self, acts: torch.Tensor) -> None:
        """Counts the positive entries of `acts` [rows, features]."""
        peak = acts.amax(0).double()
        for feature in torch.nonzero((peak >= self.top) & (peak > 0)).flatten().tolist():
            self._widen(feature, peak[feature].item())
        active = acts > 0
        bins = (acts[active] / self.top.expand_as(acts)[active] * BINS).long().clamp(max=BINS - 1)
        features = active.nonzero()[:, 1]
        self.counts.view(-1).index_add_(0, features * BINS + bins, torch.ones_like(bins))

    def _widen(self, feature: int, peak: float) -> None:
        """Doubles the feature's range until `peak` lies below its top (the first value sets it just above)."""
        if self.top[feature] == 0:
            self.top[feature] = math.nextafter(peak, math.inf)
        while self.top[feature] <= peak:
            merged = self.counts[feature].view(BINS // 2, 2).sum(1)
            self.counts[feature] = torch.cat([merged, torch.zeros_like(merged)])
            self.top[feature] *= 2

    def quantiles(self, feature: int, shares: torch.Tensor) -> list[float]:
        """The activation below which each of `shares` (in [0, 1]) of the feature's positive activations lie,
        interpolated within its bin; all 0 if it never fired."""
        counts = self.counts[feature].double()
        total = counts.sum()
        if total == 0:
            return [0.0] * len(shares)
        cumulative = counts.cumsum(0)
        at = torch.searchsorted(cumulative, shares.double() * total).clamp(max=BINS - 1)
        below = torch.where(at > 0, cumulative[at - 1], torch.zeros_like(total))
        within = ((shares.double() * total - below) / counts[at].clamp(min=1)).clamp(0, 1)
        return ((at + within) * (self.top[feature] / BINS)).tolist()

    def coarse(self, feature: int, n_bins: int, act_max: float) -> list[float]:
        """Counts in `n_bins` equal bins over [0, act_max], each fine bin counted in the coarse bin of its centre."""
        out = torch.zeros(n_bins, dtype=torch.float64)
        if act_max <= 0:
            return out.tolist()
        centres = (torch.arange(BINS, dtype=torch.float64) + 0.5) * (self.top[feature] / BINS)
        at = (centres / act_max * n_bins).long().clamp(max=n_bins - 1)
        return out.index_add_(0, at, self.counts[feature].double()).tolist()
