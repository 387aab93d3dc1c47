"""ReLU sparse autoencoder with the decoder-norm weighted L1 penalty (Anthropic, April 2024 update).

    f = ReLU(W_enc x + b_enc),  x_hat = W_dec f + b_dec
    loss = mean_rows ||x - x_hat||^2 + lambda * mean_rows sum_i f_i ||W_dec[:, i]||

Inputs are expected scaled to E||x||^2 = d_in. Decoder columns start as random directions of
norm `init_decoder_norm`, the encoder as the decoder's transpose, biases at zero.

At equal L0 it explains less than the TopK kinds: for a feature alone, minimising (m - c)^2 + lambda c
over its output c = f_i ||W_dec[:, i]|| gives c = m - lambda / 2, so the penalty that silences small
pre-activations also shrinks every kept one by lambda / 2; at an L0 near the data's own the threshold
that silences interference is about a feature's own size. On the recipe benchmark
(`python -m pipeline.bench.recipes`) it trains as SAELens's standard SAE, the same recipe in SAELens's
own trainer, at each lambda on the same batches.
"""

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.coders.base import Coder, FeatureShard, compute_dtype, expect
from pipeline.coders.relu_kernel import ReluSAELoss
from pipeline.config import CoderConfig


@dataclass
class ReluConfig(CoderConfig):
    kind: str = "relu"  # this kind
    # lambda of the sparsity penalty (this weighted L1, or jumprelu's); inputs at E||x||^2=d. 5 as Anthropic's April
    # 2024 update; one default for every kind sharing the field, while the L0 a lambda gives depends on the kind, data
    # and lr (on the recipe benchmark at lr 3e-3: relu 2.4 gives L0 27.6, jumprelu 0.6 L0 19.6), so sweeps set it
    l1_coefficient: float = 5.0
    init_decoder_norm: float = 0.1  # norm of each decoder column at initialisation

    def __post_init__(self):
        super().__post_init__()
        expect(self.l1_coefficient >= 0, "l1_coefficient", "a penalty coefficient >= 0", self.l1_coefficient)
        expect(self.init_decoder_norm > 0, "init_decoder_norm", "a positive norm", self.init_decoder_norm)


class ReluSAE(Coder):
    kind = "relu"
    config_class = ReluConfig
    stackable, per_arm_fields = True, ("l1_coefficient",)
    feature_sharding = True

    def __init__(self, d_in: int, n_features: int, l1_coefficient: float = 5.0, init_decoder_norm: float = 0.1):
        super().__init__(d_in, n_features, l1_coefficient=l1_coefficient, init_decoder_norm=init_decoder_norm)
        self.l1_coefficient = l1_coefficient
        self.init_tied_weights(init_decoder_norm)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(nn.functional.linear(x, self.w_enc, self.b_enc))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(f.to(self.w_dec.dtype), self.w_dec, self.b_dec)

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        params = (self.w_enc, self.b_enc, self.w_dec, self.b_dec)
        reconstruction, sparsity, f = ReluSAELoss.apply(x, *params, compute_dtype(x))
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity}, f

    def flops_per_token(self) -> float:
        # Encoder and decoder products are 2*d*N FLOPs each forward; backward costs twice the forward.
        return 3 * 2 * (2 * self.d_in * self.n_features)

    def sharded_encode(self, x: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        return torch.relu(nn.functional.linear(x, self.w_enc, self.b_enc))

    def sharded_loss(self, x: torch.Tensor, sparsity_scale: float, shard: FeatureShard):
        f = self.sharded_encode(x, shard)
        reconstruction = (x - self.sharded_decode(f, shard)).pow(2).sum(-1).mean()
        sparsity = shard.sum((f * self.w_dec.norm(dim=0)).sum(-1).mean())
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity}, f
