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

import math
from dataclasses import dataclass

import torch

from pipeline.coders.base import FeatureShard, expect
from pipeline.coders.topk import TopKConfig, TopKFamily


@dataclass
class BatchTopKConfig(TopKConfig):
    kind: str = "batchtopk"  # this kind
    threshold_momentum: float = 0.9  # weight of the running threshold against each step's batch minimum, in [0, 1)

    def __post_init__(self):
        super().__post_init__()
        expect(0 <= self.threshold_momentum < 1, "threshold_momentum", "a momentum in [0, 1)", self.threshold_momentum)


class BatchTopKSAE(TopKFamily):
    kind = "batchtopk"
    config_class = BatchTopKConfig
    rows_independent = False  # the selection spans the whole batch

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

    def sharded_activate(self, pre: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        if not self.training:
            return self.activate(pre)  # at evaluation the learned threshold, feature by feature
        rows = pre.shape[0]
        return shard.top(torch.relu(pre).flatten(), self.k * rows, shard.widest * rows).view_as(pre)

    def sharded_after_activation(self, f: torch.Tensor, shard: FeatureShard) -> None:
        # The running threshold follows the smallest positive activation kept in the whole batch; handing
        # it the minimum over all ranks makes every rank take the same step.
        positive = torch.where(f > 0, f, torch.full_like(f, math.inf))
        self.after_activation(shard.reduce(positive.min().reshape(1), "min"))
