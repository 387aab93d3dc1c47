"""Run metrics: reconstruction quality and sparsity on held-out rows, and dead features over a token window."""

import math

import torch

from pipeline.coders.base import Coder


class FiringTracker:
    """When each feature last fired, in tokens seen, to tell dead features over a trailing window."""

    def __init__(self, n_features: int, device: torch.device):
        self.last_fired = torch.full((n_features,), -1, dtype=torch.long, device=device)
        self.tokens = 0

    def update(self, f: torch.Tensor) -> None:
        self.tokens += f.shape[0]
        self.last_fired[(f > 0).any(0)] = self.tokens

    def dead_fraction(self, window: int) -> tuple[float, int]:
        """(fraction dead, window used): runs shorter than `window` use all their tokens."""
        used = min(window, self.tokens)
        dead = self.last_fired <= self.tokens - used
        return float(dead.float().mean()), used


@torch.no_grad()
def evaluate(coder: Coder, batches, sparsity_scale: float = 1.0) -> dict:
    """Loss parts, MSE, fraction of variance unexplained, L0 and feature density over `batches`."""
    sums = {"rows": 0, "loss": 0.0, "sq_err": 0.0, "l0": 0.0}
    x_sum = x_sq = fired = None
    for x in batches:
        parts, f = coder.loss(x, sparsity_scale)
        err = (x - coder.decode(f)).pow(2).sum().item()
        n = x.shape[0]
        sums["rows"] += n
        sums["loss"] += parts["loss"].item() * n
        sums["sq_err"] += err
        sums["l0"] += (f > 0).sum().item()
        x_sum = x.double().sum(0) if x_sum is None else x_sum + x.double().sum(0)
        x_sq = x.double().pow(2).sum() if x_sq is None else x_sq + x.double().pow(2).sum()
        fired = (f > 0).sum(0) if fired is None else fired + (f > 0).sum(0)
    n, d = sums["rows"], coder.d_in
    total_var = (x_sq - x_sum.pow(2).sum() / n).item()
    density = fired.double() / n
    return {
        "loss": sums["loss"] / n,
        "mse": sums["sq_err"] / (n * d),
        "fvu": sums["sq_err"] / total_var,
        "l0": sums["l0"] / n,
        "density_histogram": density_histogram(density),
    }


def density_histogram(density: torch.Tensor, bins: int = 20) -> dict:
    """Counts of features by log10 firing density; features that never fired are counted apart."""
    alive = density[density > 0]
    low = math.floor(math.log10(alive.min().item())) if len(alive) else -6
    edges = torch.linspace(low, 0, bins + 1, dtype=torch.float64)
    counts = torch.histogram(alive.log10().cpu(), bins=edges).hist if len(alive) else torch.zeros(bins)
    return {"log10_edges": edges.tolist(), "counts": counts.long().tolist(), "never_fired": int((density == 0).sum())}
