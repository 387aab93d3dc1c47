"""TopK sparse autoencoder with the AuxK loss (Gao et al., OpenAI, "Scaling and evaluating sparse autoencoders").

    pre = W_enc (x - b_dec) + b_enc
    f = ReLU(TopK_k(pre))                   the k largest pre-activations of each row, the rest zero
    x_hat = W_dec f + b_dec
    loss = mean_rows ||x - x_hat||^2 + alpha * L_aux

AuxK: a latent is dead once it has not fired for `dead_tokens_threshold` tokens (counted in the
buffer `tokens_since_fired`, updated by `loss` during training steps). The residual
e = x - x_hat (detached) is reconstructed from the `aux_k` largest pre-activations among the dead
latents only, e_hat = W_dec ReLU(TopK_aux(pre restricted to dead)), with no decoder bias, and

    L_aux = mean_rows ||e - e_hat||^2

in the same units as the reconstruction term (sum over dimensions, mean over rows), which is the
paper's definition L = ||x - x_hat||^2 + alpha ||e - e_hat||^2 taken literally; alpha is
`aux_k_coefficient` (1/32) times the trainer's `sparsity_scale`. With no dead latent L_aux is 0.

Decoder columns start as random unit directions, the encoder as the decoder's transpose, both biases
at zero; `after_step` puts the decoder columns back on the unit sphere after each optimiser step.
The gradient component parallel to each decoder column, which the paper projects out before the
step, is not removed here: the renormalisation after the step does the same job approximately.
"""

import torch
from torch import nn

from pipeline.coders.base import Coder
from pipeline.errors import ConfigError


class TopKFamily(Coder):
    """What topk and batchtopk share: initialisation, pre-bias encoder, decoder, dead-latent count, AuxK."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int,
        aux_k: int,
        aux_k_coefficient: float,
        dead_tokens_threshold: int,
        **extra,
    ):
        if not 1 <= k <= n_features:
            raise ConfigError(f"coder.k: expected between 1 and n_features={n_features}, got {k}")
        if aux_k < 0:
            raise ConfigError(f"coder.aux_k: expected a count >= 0, got {aux_k}")
        super().__init__(
            d_in,
            n_features,
            k=k,
            aux_k=aux_k,
            aux_k_coefficient=aux_k_coefficient,
            dead_tokens_threshold=dead_tokens_threshold,
            **extra,
        )
        self.k, self.aux_k, self.aux_k_coefficient = k, aux_k, aux_k_coefficient
        self.dead_tokens_threshold = dead_tokens_threshold
        self.init_tied_weights(1.0)
        # Tokens since each latent last fired (f > 0); a latent is dead once this reaches dead_tokens_threshold.
        self.register_buffer("tokens_since_fired", torch.zeros(n_features, dtype=torch.long))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x - self.b_dec, self.w_enc, self.b_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(f, self.w_dec, self.b_dec)

    def updating(self) -> bool:
        """Whether `loss` updates running statistics: a training step (training mode with gradients on).

        `evaluate` runs under no_grad, so held-out rows never change the saved statistics.
        """
        return self.training and torch.is_grad_enabled()

    def dead(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_tokens_threshold

    @torch.no_grad()
    def count_firing(self, f: torch.Tensor) -> None:
        fired = (f > 0).reshape(-1, self.n_features)
        self.tokens_since_fired += fired.shape[0]
        self.tokens_since_fired.masked_fill_(fired.any(0), 0)

    def auxk_loss(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """mean_rows ||e - e_hat||^2 with e_hat from the top `aux_k` dead latents; 0 when none is dead."""
        dead = self.dead()
        n_aux = min(self.aux_k, int(dead.sum()))
        if n_aux == 0:
            return pre.new_zeros(())
        values, index = pre.masked_fill(~dead, float("-inf")).topk(n_aux, dim=-1)
        f_aux = torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
        e_hat = nn.functional.linear(f_aux, self.w_dec)
        return (residual - e_hat).pow(2).sum(-1).mean()

    def after_activation(self, f: torch.Tensor) -> None:
        """Hook for running statistics of the activation, called by `loss` on training steps."""

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pre = self.pre_activation(x)
        f = self.activate(pre)
        x_hat = self.decode(f)
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        if self.updating():
            self.count_firing(f)
            self.after_activation(f.detach())
        auxk = self.auxk_loss(pre, (x - x_hat).detach())
        total = reconstruction + sparsity_scale * self.aux_k_coefficient * auxk
        return {"loss": total, "reconstruction": reconstruction, "auxk": auxk}, f

    @torch.no_grad()
    def after_step(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)

    @classmethod
    def training_flops(cls, d_in: int, n_features: int, k: int = 32) -> float:
        # Dense encoder 2*d*N forward; sparse decoder (k active latents per row) 2*d*k forward;
        # backward twice the forward. The AuxK decoder (at most 2*d*aux_k forward, only while some
        # latents are dead) and the top-k selection are not counted.
        return 3 * (2 * d_in * n_features + 2 * d_in * k)

    def flops_per_token(self) -> float:
        return self.training_flops(self.d_in, self.n_features, k=self.k)


class TopKSAE(TopKFamily):
    kind = "topk"

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int = 32,
        aux_k: int = 512,
        aux_k_coefficient: float = 1 / 32,
        dead_tokens_threshold: int = 10_000_000,
    ):
        super().__init__(d_in, n_features, k, aux_k, aux_k_coefficient, dead_tokens_threshold)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
