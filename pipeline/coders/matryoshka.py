"""Matryoshka BatchTopK sparse autoencoder (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; as SAELens 6.54's `matryoshka_batchtopk` and dictionary_learning's trainer).

The features are BatchTopK's (`pipeline.coders.batchtopk`: the k * batch_size largest activations over
the batch in training, the learned threshold at evaluation). The first m_1 < m_2 < ... < m_L = N
features are nested prefixes of the dictionary, and each prefix must reconstruct the input alone:

    x_hat_j = b_dec + sum_{i < m_j} f_i W_dec[:, i]
    loss = sum_j mean_rows ||x - x_hat_j||^2 + alpha * L_aux

so the early features learn the most general directions and the later ones add detail instead of
absorbing them. The prefix sizes are m_j = round(p_j * N) for the fractions p_j of `prefix_fractions`
(fractions, so one setting serves every width of a sweep), with the whole dictionary added last.
As in SAELens, every prefix has weight 1 and AuxK (alpha = `aux_k_coefficient` with the penalty's
warm-up) reconstructs the whole dictionary's residual; dictionary_learning averages the prefix
terms with weights instead, which scales the loss and so the learning rate.

The x_hat_j are running sums over consecutive groups of decoder columns, so the decoder costs what one
decoder product costs; FLOPs per token are BatchTopK's. Training is sparse, as BatchTopK's: the selected
entries of each row are decoded group by group with embedding bags (`topk_kernel.prefix_decode`) and the
running sums taken over the groups; evaluation decodes the thresholded activations densely. The prefix
terms need the features in their global order, so the features are not split over ranks
(train.parallel=features).
"""

from dataclasses import dataclass, field

import torch

from pipeline.coders.base import BatchSparseActs, expect, with_rows_axis
from pipeline.coders.batchtopk import BatchTopKConfig, BatchTopKSAE
from pipeline.coders.topk_kernel import prefix_decode


def prefix_sizes(fractions: list[float], n_features: int) -> list[int]:
    """The sizes of the nested prefixes: each fraction of `n_features`, then the whole dictionary."""
    return [round(p * n_features) for p in fractions] + [n_features]


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    kind: str = "matryoshka"  # this kind
    # shares of the dictionary in the nested prefixes that each reconstruct the input, increasing, in (0, 1)
    prefix_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.25])

    def __post_init__(self):
        super().__post_init__()
        fractions, n = list(self.prefix_fractions), self.n_features
        sizes = prefix_sizes(fractions, n)
        expected = f"increasing fractions in (0, 1) whose prefixes of the {n} features hold 1 to {n - 1} distinct sizes"
        ok = all(0 < p < 1 for p in fractions) and sizes[0] >= 1 and all(a < b for a, b in zip(sizes, sizes[1:]))
        expect(ok, "prefix_fractions", expected, fractions)


class MatryoshkaSAE(BatchTopKSAE):
    kind = "matryoshka"
    config_class = MatryoshkaConfig
    feature_sharding = False  # a prefix spans every rank's features

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int = 32,
        aux_k: int = 512,
        aux_k_coefficient: float = 1 / 32,
        dead_tokens_threshold: int = 10_000_000,
        threshold_momentum: float = 0.9,
        threshold_calibration: str = "running",
        prefix_fractions: list[float] = (0.0625, 0.25),
    ):
        super().__init__(
            d_in, n_features, k, aux_k, aux_k_coefficient, dead_tokens_threshold, threshold_momentum,
            threshold_calibration,
        )  # fmt: skip
        self.hparams["prefix_fractions"] = list(prefix_fractions)
        self.prefix_sizes = prefix_sizes(list(prefix_fractions), n_features)

    def nested_errors(self, x: torch.Tensor, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(mean_rows ||x - x_hat_j||^2 for each prefix j, the whole dictionary's x_hat) of dense activations; per arm
        of a stack."""
        f = f.to(self.w_dec.dtype)
        x_hat, errors, start = with_rows_axis(self.b_dec), [], 0
        for stop in self.prefix_sizes:
            x_hat = x_hat + f[..., start:stop] @ self.w_dec[..., start:stop].mT
            errors.append((x - x_hat).pow(2).sum(-1).mean(-1))
            start = stop
        return errors, x_hat

    def sparse_nested_errors(self, x: torch.Tensor, f: BatchSparseActs) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`nested_errors` of a training step's selection, decoded by embedding bags (`topk_kernel.prefix_decode`)."""
        x_hats = prefix_decode(self.w_dec, f, self.prefix_sizes) + self.b_dec.unsqueeze(-2).unsqueeze(-2)
        errors = (x.unsqueeze(-3) - x_hats).pow(2).sum(-1).mean(-1)
        return list(errors.unbind(-1)), x_hats[..., -1, :, :]

    def loss(
        self, x: torch.Tensor, sparsity_scale: float = 1.0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | BatchSparseActs]:
        if self.training:  # sparse, as BatchTopK's training step
            pre, f = self.batch_selection(x)
            errors, x_hat = self.sparse_nested_errors(x, f)
        else:  # the learned threshold, densely
            pre = self.pre_activation(x)
            f = self.activate(pre)
            errors, x_hat = self.nested_errors(x, f)
            pre = pre.detach()
        *inner, reconstruction = errors
        auxk = self.auxk_loss(pre, x, (x - x_hat).detach())
        prefixes = torch.stack(inner).sum(0)
        total = reconstruction + prefixes + sparsity_scale * self.aux_k_coefficient * auxk
        return {"loss": total, "reconstruction": reconstruction, "prefix_reconstruction": prefixes, "auxk": auxk}, f
