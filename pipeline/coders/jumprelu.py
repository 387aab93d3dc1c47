"""JumpReLU sparse autoencoder with straight-through threshold gradients.

Rajamanoharan et al. 2024 ("Jumping Ahead", used for Gemma Scope) and the tanh sparsity penalty and
pre-activation loss of Anthropic's Circuit Tracing (2025):

    pre = W_enc x + b_enc,  theta = exp(log_threshold)  (one threshold per feature)
    f = JumpReLU_theta(pre) = pre * H(pre - theta),  x_hat = W_dec f + b_dec
    loss = mean_rows ||x - x_hat||^2 + sparsity_scale * lambda * S + lambda_p * P

with lambda = `l1_coefficient` (the generic sparsity lambda shared with relu), lambda_p = `preact_coefficient` and

    penalty = "l0":   S = mean_rows sum_i H(pre_i - theta_i)                     (Gemma Scope)
    penalty = "tanh": S = mean_rows sum_i tanh(c * f_i * ||W_dec[:, i]||)          (Circuit Tracing, c = tanh_scale)
    penalty = "quadratic": S = mean_rows (2 / T) (sum_i H(pre_i - theta_i) - T)^2  (Gemma Scope 2, T = target_l0)
    P = mean_rows sum_i ReLU(theta_i - pre_i) * ||W_dec[:, i]||                  (0 unless preact_coefficient > 0)

H has zero derivative almost everywhere, so theta learns through pseudo-derivatives with a rectangle
kernel K(u) = 1 for |u| < 1/2 (else 0) of width eps = `bandwidth`:

    d/dtheta JumpReLU_theta(z) := -(theta / eps) K((z - theta) / eps),  d/dz JumpReLU_theta(z) := H(z - theta)
    d/dtheta H(z - theta)      := -(1 / eps) K((z - theta) / eps),      d/dz H(z - theta) := 0

and d theta / d log_threshold = theta by the chain rule.

Initialisation follows relu: decoder columns random directions of norm `init_decoder_norm`, encoder
the decoder's transpose, biases zero, every theta = `init_threshold`. The L0 penalty cannot see the
scale of a decoder column, so with penalty="l0" or "quadratic" `after_step` holds every column at norm
`init_decoder_norm` (Gemma Scope holds them at 1; any fixed norm removes the symmetry). The tanh
penalty weights by the decoder norm, so there `after_step` does nothing.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from pipeline.coders.base import Coder, FeatureShard, affine, compute_dtype, expect, with_rows_axis
from pipeline.coders.jumprelu_kernel import JumpReluSAELoss
from pipeline.coders.relu import ReluConfig

STEP_PENALTIES = ("l0", "quadratic")  # the penalties on the count of active features, blind to decoder norms
# The config fields whose constructor keyword drops the `jumprelu_` prefix the shared `coder` node needs.
RENAMED = {"jumprelu_penalty": "penalty", "jumprelu_bandwidth": "bandwidth"}


@dataclass
class JumpReluConfig(ReluConfig):
    """The fields of the JumpReLU kinds (jumprelu, and the transcoders extending this config)."""

    penalties: ClassVar[tuple[str, ...]] = ("l0", "tanh")  # the values jumprelu_penalty may take
    kind: str = "jumprelu"  # this kind
    # sparsity penalty: l0 (Gemma Scope), tanh (Circuit Tracing) or, for jumprelu, quadratic (Gemma Scope 2)
    jumprelu_penalty: str = "tanh"
    jumprelu_bandwidth: float = 0.001  # width of the threshold gradient's rectangle kernel (pre-activation units)
    init_threshold: float = 0.001  # threshold theta of every feature at initialisation (pre-activation units)
    tanh_scale: float = 4.0  # c of the tanh penalty sum_i tanh(c * f_i * ||W_dec,i||) (per pre-activation unit)
    preact_coefficient: float = 0.0  # lambda_p of the loss sum_i ReLU(theta_i - pre_i) ||W_dec,i|| (0 = off)

    def __post_init__(self):
        super().__post_init__()
        penalty = self.jumprelu_penalty
        expect(penalty in self.penalties, "jumprelu_penalty", f"one of {', '.join(self.penalties)}", penalty)
        expect(self.jumprelu_bandwidth > 0, "jumprelu_bandwidth", "a positive width", self.jumprelu_bandwidth)
        expect(self.init_threshold > 0, "init_threshold", "a positive threshold", self.init_threshold)
        expect(self.tanh_scale > 0, "tanh_scale", "a positive scale", self.tanh_scale)
        expect(self.preact_coefficient >= 0, "preact_coefficient", "a coefficient >= 0", self.preact_coefficient)


@dataclass
class JumpReluSAEConfig(JumpReluConfig):
    penalties: ClassVar[tuple[str, ...]] = ("l0", "tanh", "quadratic")
    target_l0: float = 32.0  # T of the quadratic penalty: the active features per row it pulls towards

    def __post_init__(self):
        super().__post_init__()
        if self.jumprelu_penalty == "quadratic":
            n = self.n_features
            expect(0 < self.target_l0 <= n, "target_l0", f"a count in (0, n_features={n}]", self.target_l0)


def quadratic_penalty(counts: torch.Tensor, target: float) -> torch.Tensor:
    """Gemma Scope 2's mean_rows (2 / T) (L0_row - T)^2 of [..., rows] active-feature counts (as SAELens 6.54's
    `quadratic` mode)."""
    return (2 / target * (counts - target).pow(2)).mean(-1)


def _rectangle(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return ((pre - theta).abs() < bandwidth / 2).to(pre.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """pre * H(pre - theta) with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta).to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            kernel = _rectangle(pre, theta, ctx.bandwidth)
            grad_theta = (-(theta / ctx.bandwidth) * kernel * grad).sum_to_size(theta.shape)
        return grad_pre, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(pre - theta) with the straight-through threshold gradient and no gradient to pre."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, theta = ctx.saved_tensors
        grad_theta = None
        if ctx.needs_input_grad[1]:
            kernel = _rectangle(pre, theta, ctx.bandwidth)
            grad_theta = (-(1.0 / ctx.bandwidth) * kernel * grad).sum_to_size(theta.shape)
        return None, grad_theta, None


class JumpReluSAE(Coder):
    kind = "jumprelu"
    config_class = JumpReluSAEConfig
    renamed = RENAMED
    stackable, per_arm_fields = True, ("l1_coefficient",)
    feature_sharding = True

    def __init__(
        self,
        d_in: int,
        n_features: int,
        l1_coefficient: float = 5.0,
        penalty: str = "tanh",
        bandwidth: float = 0.001,
        init_threshold: float = 0.001,
        tanh_scale: float = 4.0,
        preact_coefficient: float = 0.0,
        init_decoder_norm: float = 0.1,
        target_l0: float = 32.0,
    ):
        super().__init__(
            d_in,
            n_features,
            l1_coefficient=l1_coefficient,
            penalty=penalty,
            bandwidth=bandwidth,
            init_threshold=init_threshold,
            tanh_scale=tanh_scale,
            preact_coefficient=preact_coefficient,
            init_decoder_norm=init_decoder_norm,
            target_l0=target_l0,
        )
        self.target_l0 = target_l0
        self.l1_coefficient, self.penalty, self.bandwidth = l1_coefficient, penalty, bandwidth
        self.tanh_scale, self.preact_coefficient = tanh_scale, preact_coefficient
        self.init_decoder_norm = init_decoder_norm
        self.init_tied_weights(init_decoder_norm)
        self.log_threshold = nn.Parameter(torch.full((n_features,), math.log(init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.w_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return JumpReLUFunction.apply(self.pre_activation(x), self.threshold, self.bandwidth)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(f.to(self.w_dec.dtype), self.w_dec, self.b_dec)

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.penalty == "quadratic":
            return self.quadratic_loss(x, sparsity_scale)
        hp = {"penalty": self.penalty, "tanh_scale": self.tanh_scale, "bandwidth": self.bandwidth}
        params = (self.w_enc, self.b_enc, self.w_dec, self.b_dec, self.log_threshold)
        reconstruction, sparsity, preact, f = JumpReluSAELoss.apply(x, *params, hp, compute_dtype(x))
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        if self.preact_coefficient:
            total = total + self.preact_coefficient * preact
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity, "preact": preact}, f

    def quadratic_loss(self, x: torch.Tensor, sparsity_scale: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The loss with the quadratic penalty, through autograd (the fused kernel has the l0 and tanh penalties);
        the weights may be a stack's."""
        pre = affine(x, self.w_enc, self.b_enc)
        theta, norm = with_rows_axis(self.threshold), with_rows_axis(self.w_dec.norm(dim=-2))
        f = JumpReLUFunction.apply(pre, theta, self.bandwidth)
        reconstruction = (x - affine(f, self.w_dec, self.b_dec)).pow(2).sum(-1).mean(-1)
        sparsity = quadratic_penalty(StepFunction.apply(pre, theta, self.bandwidth).sum(-1), self.target_l0)
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.preact_coefficient)):
            preact = (torch.relu(theta - pre) * norm).sum(-1).mean(-1)
        if self.preact_coefficient:
            total = total + self.preact_coefficient * preact
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity, "preact": preact}, f.detach()

    @torch.no_grad()
    def after_step(self) -> None:
        if self.penalty in STEP_PENALTIES:
            self.w_dec *= self.init_decoder_norm / self.w_dec.norm(dim=-2, keepdim=True).clamp_min(1e-12)

    def flops_per_token(self) -> float:
        # Dense encoder and dense decoder, 2*d*N FLOPs each forward; backward twice the forward (as relu).
        # Thresholds, penalties and decoder norms are O(N) or O(d*N) elementwise work and are not counted.
        return 3 * 2 * (2 * self.d_in * self.n_features)

    def sharded_encode(self, x: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        return self.encode(x)

    def sharded_loss(self, x: torch.Tensor, sparsity_scale: float, shard: FeatureShard):
        pre = self.pre_activation(x)
        f = JumpReLUFunction.apply(pre, self.threshold, self.bandwidth)
        reconstruction = (x - self.sharded_decode(f, shard)).pow(2).sum(-1).mean()
        decoder_norm, theta = self.w_dec.norm(dim=0), self.threshold
        if self.penalty == "l0":
            sparsity = shard.sum(StepFunction.apply(pre, theta, self.bandwidth).sum(-1).mean())
        elif self.penalty == "quadratic":  # the penalty of each row's count over every rank's features
            counts = shard.sum(StepFunction.apply(pre, theta, self.bandwidth).sum(-1))
            sparsity = quadratic_penalty(counts, self.target_l0)
        else:
            sparsity = shard.sum(torch.tanh(self.tanh_scale * f * decoder_norm).sum(-1).mean())
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.preact_coefficient)):
            preact = shard.sum((torch.relu(theta - pre) * decoder_norm).sum(-1).mean())
        if self.preact_coefficient:
            total = total + self.preact_coefficient * preact
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity, "preact": preact}, f
