"""Run metrics: reconstruction quality and sparsity on held-out rows, and dead features over a token window."""

import math

import torch

from pipeline.coders.base import Coder, SparseActs, fired_in_batch


class FiringTracker:
    """When each feature last fired, in tokens seen, to tell dead features over a trailing window."""

    def __init__(self, n_features: int, device: torch.device):
        self.last_fired = torch.full((n_features,), -1, dtype=torch.long, device=device)
        self.tokens = 0

    def update(self, f: torch.Tensor | SparseActs) -> None:
        self.tokens += f.shape[0]
        # masked_fill_, unlike indexing with a mask, does not wait for the device.
        self.last_fired.masked_fill_(fired_in_batch(f), self.tokens)

    def dead(self, window: int) -> tuple[torch.Tensor, int]:
        """(which features are dead, window used): runs shorter than `window` use all their tokens."""
        used = min(window, self.tokens)
        return self.last_fired <= self.tokens - used, used

    def dead_fraction(self, window: int) -> tuple[float, int]:
        """(fraction dead, window used)."""
        dead, used = self.dead(window)
        return float(dead.float().mean()), used

    def dead_fractions(self, window: int, n_groups: int) -> list[float]:
        """The fraction dead in each of `n_groups` equal consecutive groups of features (a CLT's layers)."""
        return self.dead(window)[0].view(n_groups, -1).float().mean(1).tolist()


def _firing_counts(f: torch.Tensor | SparseActs) -> torch.Tensor:
    """[n_features]: the number of rows in which each feature fired."""
    if isinstance(f, SparseActs):
        return torch.bincount(f.index[f.values > 0], minlength=f.n_features)
    return (f > 0).sum(0)


def _whole_batch(batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
    return batch, {}


@torch.no_grad()
def evaluate(coder: Coder, batches, sparsity_scale: float = 1.0, split=_whole_batch) -> dict:
    """Loss parts, MSE, fraction of variance unexplained, L0 and feature density over `batches`.

    `split` turns a batch into (inputs, the target keywords of `coder.loss`), e.g. an `arrays.Columns`;
    by default the batch is an SAE's input and its own target. Errors are measured against the
    target: the input for an SAE, the predicted array for a transcoder. A CLT's target has a layer
    axis, and its metrics also come per layer under "layers".
    """
    sums = {"rows": 0, "loss": 0.0}
    sq_err = y_sum = y_sq = fired = None
    for batch in batches:
        x, target = split(batch)
        parts, f = coder.loss(x, sparsity_scale, **target)
        y, y_hat = (target["target"], coder(x)) if target else (x, coder.decode(f))
        layered = y.dim() == 3
        y = y.double().reshape(len(y), -1, y.shape[-1])  # [rows, layers, d]; one layer unless a CLT
        err = (y - y_hat.double().reshape(y.shape)).pow(2).sum((0, 2))
        n = len(y)
        sums["rows"] += n
        sums["loss"] += parts["loss"].item() * n
        sq_err = err if sq_err is None else sq_err + err
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
        y_sq = y.pow(2).sum((0, 2)) if y_sq is None else y_sq + y.pow(2).sum((0, 2))
        fired = _firing_counts(f) if fired is None else fired + _firing_counts(f)
    n, (n_layers, d) = sums["rows"], y_sum.shape
    variance = y_sq - y_sum.pow(2).sum(-1) / n  # per layer, summed over dimensions
    density = fired.double() / n
    metrics = {
        "loss": sums["loss"] / n,
        "mse": sq_err.sum().item() / (n * n_layers * d),
        "fvu": (sq_err.sum() / variance.sum()).item(),
        "l0": density.sum().item(),
        "density_histogram": density_histogram(density),
    }
    if layered:
        metrics["layers"] = [
            {
                "reconstruction": sq_err[layer].item() / n,
                "mse": sq_err[layer].item() / (n * d),
                "fvu": (sq_err[layer] / variance[layer]).item(),
                "l0": layer_density.sum().item(),
                "density_histogram": density_histogram(layer_density),
            }
            for layer, layer_density in enumerate(density.view(n_layers, -1))
        ]
    return metrics


def density_histogram(density: torch.Tensor, bins: int = 20) -> dict:
    """Counts of features by log10 firing density; features that never fired are counted apart."""
    alive = density[density > 0]
    low = math.floor(math.log10(alive.min().item())) if len(alive) else -6
    edges = torch.linspace(low, 0, bins + 1, dtype=torch.float64)
    counts = torch.histogram(alive.log10().cpu(), bins=edges).hist if len(alive) else torch.zeros(bins)
    return {"log10_edges": edges.tolist(), "counts": counts.long().tolist(), "never_fired": int((density == 0).sum())}
