"""BatchTopK sparse autoencoder (Bussmann, Leask and Nanda, 2024), with OpenAI's AuxK loss.

    pre = W_enc (x - b_dec) + b_enc,  x_hat = W_dec f + b_dec
    training:  f = the k * batch_size largest entries of ReLU(pre) over the whole batch, the rest zero
    inference: f = pre * (pre > threshold)

so rows use a variable number of latents, k on average. `threshold` (a buffer) is the running
estimate of the smallest positive activation the batch selection kept: on each training step the
batch minimum m updates it as threshold <- momentum * threshold + (1 - momentum) * m (the first
step sets it to m; the default momentum 0.9 averages over about the last ten steps, so the estimate
follows activations that drift during training). Until the first training step it is 0, i.e. plain
ReLU. Call `.eval()` to encode with the threshold; in training mode `encode` and `loss` select per
batch.

Initialisation, the decoder renormalisation in `after_step`, the dead-latent count and the AuxK
loss are those of `pipeline.coders.topk`.
"""

import torch

from pipeline.coders.topk import TopKFamily
from pipeline.errors import ConfigError


class BatchTopKSAE(TopKFamily):
    kind = "batchtopk"

    def __init__(
        self,
        d_in: int,
        n_features: int,
        k: int = 32,
        aux_k: int = 512,
        aux_k_coefficient: float = 1 / 32,
        dead_tokens_threshold: int = 10_000_000,
        threshold_momentum: float = 0.9,
    ):
        if not 0 <= threshold_momentum < 1:
            raise ConfigError(f"coder.threshold_momentum: expected in [0, 1), got {threshold_momentum}")
        super().__init__(
            d_in, n_features, k, aux_k, aux_k_coefficient, dead_tokens_threshold, threshold_momentum=threshold_momentum
        )
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if not self.training:
            theta = self.threshold.view(*self.arms, *[1] * (pre.dim() - len(self.arms)))  # one per arm of a stack
            return pre * (pre > theta)
        flat = torch.relu(pre).reshape(*self.arms, -1)  # each arm of a stack selects over its own batch
        values, index = flat.topk(self.k * (flat.shape[-1] // self.n_features), dim=-1)
        return torch.zeros_like(flat).scatter(-1, index, values).view_as(pre)

    @property
    def arms(self) -> tuple[int, ...]:
        """(arms,) for a stack of coders (`pipeline.train.stack`), () for one coder."""
        return tuple(self.w_enc.shape[:-2])

    @torch.no_grad()
    def after_activation(self, f: torch.Tensor) -> None:
        # Smallest positive selected activation, without a host sync; +inf when nothing fired.
        positive = torch.where(f > 0, f, torch.full_like(f, float("inf"))).reshape(*self.arms, -1)
        batch_min = positive.min(-1).values.to(self.threshold.dtype)
        seen = torch.isfinite(batch_min)
        m = self.threshold_momentum
        running = torch.where(self.threshold_updates > 0, m * self.threshold + (1 - m) * batch_min, batch_min)
        self.threshold.copy_(torch.where(seen, running, self.threshold))
        self.threshold_updates += seen.long()
