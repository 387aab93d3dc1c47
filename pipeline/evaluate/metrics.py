"""Run metrics on held-out rows (reconstruction quality as in SAEBench's core set, sparsity, firing shares) and
dead features over a token window."""

import math

import torch
import torch.nn.functional as F

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


def _as_layers(y: torch.Tensor) -> torch.Tensor:
    """[rows, layers, d] float64: one layer unless a CLT's target."""
    return y.double().reshape(len(y), -1, y.shape[-1])


class _Sums:
    """Float64 sums over the held-out rows; each (row, layer) vector of the target counts as one token."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean  # [layers, d]: the per-dimension mean of the target over every held-out row
        n_layers = len(mean)
        self.sq_err, self.variance = mean.new_zeros(n_layers), mean.new_zeros(n_layers)
        self.legacy = self.cos = self.l2_ratio = self.out_sq = self.dot = 0.0

    def add(self, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        err = (y - y_hat).pow(2).sum(-1)  # [rows, layers]
        centred = (y - self.mean).pow(2).sum(-1)
        self.sq_err += err.sum(0)
        self.variance += centred.sum(0)
        # SAEBench's legacy formula: a ratio per token, then the mean over tokens.
        self.legacy += (1 - err / centred).sum().item()
        self.cos += F.cosine_similarity(y, y_hat, dim=-1).sum().item()
        norm_in = y.norm(dim=-1)
        self.l2_ratio += (y_hat.norm(dim=-1) / torch.where(norm_in < 1e-4, 1.0, norm_in)).sum().item()
        self.out_sq += y_hat.pow(2).sum().item()
        self.dot += (y * y_hat).sum().item()


@torch.no_grad()
def evaluate(coder: Coder, batches, sparsity_scale: float = 1.0, split=_whole_batch) -> dict:
    """Loss, reconstruction quality (SAEBench's "core" set; README, Metrics) and sparsity over `batches`.

    `split` turns a batch into (inputs, the target keywords of `coder.loss`), e.g. an `arrays.Columns`;
    by default the batch is an SAE's input and its own target. Errors are measured against the
    target: the input for an SAE, the predicted array for a transcoder. A CLT's target has a layer
    axis, and its metrics also come per layer under "layers".
    """
    batches = [split(batch) for batch in batches]
    targets = [target["target"] if target else x for x, target in batches]
    n, layered = sum(len(y) for y in targets), targets[0].dim() == 3
    # The legacy formula centres each token on the mean, so a first pass finds it.
    sums, loss, fired = _Sums(sum(_as_layers(y).sum(0) for y in targets) / n), 0.0, None
    for (x, target), y in zip(batches, targets):
        parts, f = coder.loss(x, sparsity_scale, **target)
        y_hat = coder(x) if target else coder.decode(f)
        y = _as_layers(y)
        sums.add(y, y_hat.double().reshape(y.shape))
        loss += parts["loss"].item() * len(y)
        fired = _firing_counts(f) if fired is None else fired + _firing_counts(f)
    n_layers, d = sums.mean.shape
    fvu = (sums.sq_err.sum() / sums.variance.sum()).item()
    metrics = {
        "loss": loss / n,
        "mse": sums.sq_err.sum().item() / (n * n_layers * d),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "explained_variance_legacy": sums.legacy / (n * n_layers),
        "cossim": sums.cos / (n * n_layers),
        "l2_ratio": sums.l2_ratio / (n * n_layers),
        "relative_reconstruction_bias": sums.out_sq / sums.dot if sums.dot else math.nan,
        **density_metrics(fired.double() / n),
    }
    if layered:
        metrics["layers"] = [
            {
                "reconstruction": sums.sq_err[layer].item() / n,
                "mse": sums.sq_err[layer].item() / (n * d),
                "fvu": (sums.sq_err[layer] / sums.variance[layer]).item(),
                "explained_variance": 1 - (sums.sq_err[layer] / sums.variance[layer]).item(),
                **density_metrics(layer_density),
            }
            for layer, layer_density in enumerate((fired.double() / n).view(n_layers, -1))
        ]
    return metrics


def density_metrics(density: torch.Tensor) -> dict:
    """L0 and the firing statistics of features with firing densities `density` (each a share of held-out rows)."""
    return {
        "l0": density.sum().item(),
        "frac_alive": (density > 0).double().mean().item(),
        "freq_over_1_percent": (density > 0.01).double().mean().item(),
        "freq_over_10_percent": (density > 0.1).double().mean().item(),
        "density_histogram": density_histogram(density),
    }


def density_histogram(density: torch.Tensor, bins: int = 20) -> dict:
    """Counts of features by log10 firing density; features that never fired are counted apart."""
    alive = density[density > 0]
    low = math.floor(math.log10(alive.min().item())) if len(alive) else -6
    edges = torch.linspace(low, 0, bins + 1, dtype=torch.float64)
    counts = torch.histogram(alive.log10().cpu(), bins=edges).hist if len(alive) else torch.zeros(bins)
    return {"log10_edges": edges.tolist(), "counts": counts.long().tolist(), "never_fired": int((density == 0).sum())}
