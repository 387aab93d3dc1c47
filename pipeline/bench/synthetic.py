"""Synthetic activations with known features, for the recipe benchmark (`python -m pipeline.bench.recipes`).

In the spirit of SynthSAEBench (Chanin and Garriga-Alonso, 2026), scaled down to run on a CPU:
`n_features` ground-truth directions in `d` dimensions (random unit vectors: far more of them than
dimensions, so they are in superposition), each firing independently with a Zipf-distributed
probability and, when it fires, with a positive magnitude of its own; a row is the sum of its
firing features' directions times their magnitudes, plus a fixed bias:

    p_i = p_min + (p_max - p_min) * (i^-a - n^-a) / (1 - n^-a)       (feature i = 1..n, most frequent first)
    m_i ~ max(0, mu_i + s_i z),  mu_i from 5 (most frequent) to 4 (rarest),  s_i ~ |N(0.5, 0.5)|
    x = sum_i [u_i < p_i] m_i w_i + b,                                 ||w_i|| = 1, ||b|| = 0.5

with SynthSAEBench-16k's exponent a = 0.5, p_max = 0.4 and magnitudes. Its hierarchy and
correlations are left out: features here fire independently. Everything is a pure function of
`seed`; rows are drawn in blocks, each block from its own seeded generator, so row r is the same
whatever the number of rows drawn.
"""

from dataclasses import dataclass

import torch

BLOCK = 8192  # rows drawn per seeded block


@dataclass
class SyntheticFeatures:
    directions: torch.Tensor  # [n_features, d] unit ground-truth directions
    probabilities: torch.Tensor  # [n_features] firing probability of each feature, most frequent first
    mean_magnitude: torch.Tensor  # [n_features] mean activation of a firing feature
    std_magnitude: torch.Tensor  # [n_features] its standard deviation
    bias: torch.Tensor  # [d] added to every row
    seed: int  # seed of the rows (the features' own seed is in how they were made)

    @property
    def true_l0(self) -> float:
        """Expected number of firing features per row."""
        return float(self.probabilities.sum())

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """[stop - start, d] float32 rows start..stop-1 of the data set."""
        first, last = start // BLOCK, -(-stop // BLOCK)
        blocks = torch.cat([self._block(b) for b in range(first, last)])
        return blocks[start - first * BLOCK : stop - first * BLOCK]

    def _block(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        n = len(self.probabilities)
        fires = (torch.rand(BLOCK, n, generator=generator) < self.probabilities).nonzero(as_tuple=True)
        feature = fires[1]
        # Magnitudes only where a feature fires: a few dozen per row, not n.
        drawn = self.mean_magnitude[feature] + self.std_magnitude[feature] * torch.randn(
            len(feature), generator=generator
        )
        acts = torch.zeros(BLOCK, n)
        acts[fires] = drawn.clamp_min(0)
        return acts @ self.directions + self.bias


def synthetic_features(
    d: int = 128,
    n_features: int = 2048,
    exponent: float = 0.5,
    max_prob: float = 0.4,
    min_prob: float = 5e-3,
    seed: int = 0,
) -> SyntheticFeatures:
    """A data set of `n_features` Zipf-frequent features in `d` dimensions (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    zipf = torch.arange(1, n_features + 1, dtype=torch.float64).pow(-exponent)
    zipf = (zipf - zipf[-1]) / (zipf[0] - zipf[-1])
    probabilities = (min_prob + (max_prob - min_prob) * zipf).float()
    mean_magnitude = torch.linspace(5.0, 4.0, n_features)
    std_magnitude = (0.5 + 0.5 * torch.randn(n_features, generator=generator)).abs()
    bias = torch.randn(d, generator=generator)
    bias *= 0.5 / bias.norm()
    return SyntheticFeatures(directions, probabilities, mean_magnitude, std_magnitude, bias, seed + 1)


def recovery(features: SyntheticFeatures, decoder: torch.Tensor, top: int) -> float:
    """Mean over the `top` most frequent true features of the best cosine between it and a decoder column.

    `decoder` is [d, N] (a coder's W_dec). Taking the features the dictionary has room for (top = N)
    keeps the score reachable: a dictionary narrower than the truth cannot hold the rare ones.
    """
    columns = decoder / decoder.norm(dim=0, keepdim=True).clamp_min(1e-12)
    cosines = features.directions[:top] @ columns.to(features.directions.dtype)
    return float(cosines.max(dim=1).values.mean())
