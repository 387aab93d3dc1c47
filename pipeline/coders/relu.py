"""ReLU sparse autoencoder with the decoder-norm weighted L1 penalty (Anthropic, April 2024 update).

    f = ReLU(W_enc x + b_enc),  x_hat = W_dec f + b_dec
    loss = mean_rows ||x - x_hat||^2 + lambda * mean_rows sum_i f_i ||W_dec[:, i]||

Inputs are expected scaled to E||x||^2 = d_in. Decoder columns start as random directions of
norm `init_decoder_norm`, the encoder as the decoder's transpose, biases at zero.
"""

import torch
from torch import nn

from pipeline.coders.base import Coder, compute_dtype
from pipeline.coders.relu_kernel import ReluSAELoss


class ReluSAE(Coder):
    kind = "relu"

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

    @classmethod
    def training_flops(cls, d_in: int, n_features: int) -> float:
        # Encoder and decoder products are 2*d*N FLOPs each forward; backward costs twice the forward.
        return 3 * 2 * (2 * d_in * n_features)
