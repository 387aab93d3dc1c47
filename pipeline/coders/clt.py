"""Cross-layer transcoder (CLT) of Anthropic's Circuit Tracing (2025), with JumpReLU features.

Over L layers with n features each (`n_features` = L * n in all), the features of layer s read that
layer's MLP input x_s and write to the MLP outputs of layer s and of every later layer t >= s:

    pre_s = W_enc[s] x_s + b_enc[s],   f_s = JumpReLU_theta_s(pre_s)
    y_hat_t = sum_{s <= t} W_dec[s][t - s] f_s + b_dec[t]   (+ W_skip[t] x_t with `skip_connection`)

`W_dec[s]` holds one [d, n] block per target layer t >= s, so no weight exists from a layer to an
earlier one (the per-layer transcoders of `pipeline.coders.plt` keep only the block of t = s). Inputs
and targets are [rows, L, d]; the features come out flattened to [rows, L * n], layer by layer. The
decoder norm of feature i of layer s is the norm of its decoder vectors concatenated over all its target
layers, ||W_dec[s][:, :, i]||, and

    loss = mean_rows sum_t ||y_t - y_hat_t||^2 + sparsity_scale * lambda * S + lambda_p * P
    penalty = "tanh": S = mean_rows sum_{s,i} tanh(c * f_{s,i} * ||W_dec[s][:, :, i]||)
    penalty = "l0":   S = mean_rows sum_{s,i} H(pre_{s,i} - theta_{s,i})
    P = mean_rows sum_{s,i} ReLU(theta_{s,i} - pre_{s,i}) * ||W_dec[s][:, :, i]||   (the pre-activation loss)

with lambda = `l1_coefficient`, c = `tanh_scale`, lambda_p = `preact_coefficient`; the thresholds learn
through the straight-through estimators of `pipeline.coders.jumprelu`.

Initialisation: each feature's concatenated decoder vector is a random direction of norm
`init_decoder_norm`, each encoder row an independent random direction of the same norm (input and
output spaces differ, so the encoder cannot be the decoder's transpose), biases and the skip weights
zero, every theta = `init_threshold`. With penalty="l0" `after_step` holds each concatenated decoder
vector at `init_decoder_norm`, as jumprelu does per column.

FLOPs per training token, with d the width of each layer and N = L * n:

    forward = 2 d N (encoders) + sum_s (L - s) 2 d n = (L + 1) d N (decoders) + 2 L d^2 (skip, if on)
    training = 3 * forward = 3 (L + 3) d N (+ 6 L d^2)

(backward twice the forward; thresholds, norms and penalties are O(N) or O(d N) elementwise work and not counted).
With L = 1 and no skip this is jumprelu's 12 d N.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.coders.base import Coder
from pipeline.coders.jumprelu import RENAMED, JumpReluConfig, JumpReLUFunction, StepFunction
from pipeline.coders.raw import RawWeights
from pipeline.errors import ConfigError


@dataclass
class CLTConfig(JumpReluConfig):
    kind: str = "clt"  # this kind
    skip_connection: bool = False  # add a learned linear map from each layer's input to its predicted output


def _random_directions(*shape: int, norm: float, dims: tuple[int, ...]) -> torch.Tensor:
    w = torch.randn(*shape)
    return w * (norm / w.norm(dim=dims, keepdim=True))


class CrossLayerTranscoder(Coder):
    kind = "clt"
    config_class = CLTConfig
    raw_activation = "jumprelu"
    renamed = RENAMED
    stackable, per_arm_fields = True, ("l1_coefficient",)
    target_field = "layers"  # reads mlp_in.L and predicts mlp_out.L of each layer L of train.layers
    layered, cross_layer = True, True  # the features of layer s write to layers s..L-1

    def __init__(
        self,
        d_in: int,
        n_features: int,
        n_layers: int = 1,
        l1_coefficient: float = 5.0,
        penalty: str = "tanh",
        bandwidth: float = 0.5,
        init_threshold: float = 0.5,
        tanh_scale: float = 4.0,
        preact_coefficient: float = 0.0,
        init_decoder_norm: float = 0.1,
        skip_connection: bool = False,
        ste_to_input: bool = True,
    ):
        if n_layers < 1:
            raise ConfigError(f"train.layers: a {self.kind} needs at least one layer, got {n_layers}")
        if n_features % n_layers:
            raise ConfigError(
                f"coder.n_features: a {self.kind} over {n_layers} layers splits its features evenly; "
                f"expected a multiple of {n_layers}, got {n_features}"
            )
        super().__init__(
            d_in, n_features, n_layers=n_layers, l1_coefficient=l1_coefficient, penalty=penalty, bandwidth=bandwidth,
            init_threshold=init_threshold, tanh_scale=tanh_scale, preact_coefficient=preact_coefficient,
            init_decoder_norm=init_decoder_norm, skip_connection=skip_connection, ste_to_input=ste_to_input,
        )  # fmt: skip
        self.n_layers, self.per_layer = n_layers, n_features // n_layers
        self.l1_coefficient, self.penalty, self.bandwidth = l1_coefficient, penalty, bandwidth
        self.tanh_scale, self.preact_coefficient = tanh_scale, preact_coefficient
        self.init_decoder_norm, self.skip_connection = init_decoder_norm, skip_connection
        self.ste_to_input = ste_to_input
        d, n, L = d_in, self.per_layer, n_layers
        self.w_enc = nn.Parameter(_random_directions(L, n, d, norm=init_decoder_norm, dims=(2,)))
        self.b_enc = nn.Parameter(torch.zeros(L, n))
        self.log_threshold = nn.Parameter(torch.full((L, n), math.log(init_threshold)))
        self.w_dec = nn.ParameterList(
            nn.Parameter(_random_directions(self.n_targets(s), d, n, norm=init_decoder_norm, dims=(0, 1)))
            for s in range(L)
        )
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        if skip_connection:
            self.w_skip = nn.Parameter(torch.zeros(L, d, d))

    # A CLT takes [rows, layer, d]; the one-layer transcoder overrides these to take [rows, d].
    @staticmethod
    def _stack(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def _unstack(y: torch.Tensor) -> torch.Tensor:
        return y

    def n_targets(self, s: int) -> int:
        """How many layers, from layer s on, the features of layer s write to: its decoder blocks."""
        return self.n_layers - s if self.cross_layer else 1

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def decoder_norms(self) -> torch.Tensor:
        """[..., L, n]: the norm of each feature's decoder vectors concatenated over its target layers."""
        return torch.stack([w.norm(dim=(-3, -2)) for w in self.w_dec], dim=-2)

    def decoder_columns(self) -> list[torch.Tensor]:
        """One group per source layer: a feature's decoder vectors over its target layers, end to end."""
        return [w.flatten(0, 1) for w in self.w_dec]

    # The weights may carry a leading arm dimension (a stack of coders, `pipeline.train.stack`); the
    # inputs never do, so the training path below is written for [..., rows, L, *] throughout.

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activations, features), both [..., rows, L, n], of inputs [rows, L, d]."""
        pre = torch.einsum("bld,...lnd->...bln", x, self.w_enc) + self.b_enc.unsqueeze(-3)
        return pre, JumpReLUFunction.apply(pre, self.threshold.unsqueeze(-3), self.bandwidth, self.ste_to_input)

    def _decode(self, f: torch.Tensor) -> torch.Tensor:
        """[..., rows, L, n] features -> [..., rows, L, d]: each source layer's decoders in one product, padded
        to the layers it writes to."""
        *lead, rows, L, _ = f.shape
        out = self.b_dec.unsqueeze(-3).expand(*lead, rows, L, self.d_in)
        for s, w in enumerate(self.w_dec):
            k = self.n_targets(s)
            block = (f[..., s, :] @ w.flatten(-3, -2).mT).view(*lead, rows, k, self.d_in)
            out = out + F.pad(block, (0, 0, s, L - s - k))
        return out

    def _skip(self, x: torch.Tensor) -> torch.Tensor | float:
        return torch.einsum("bld,...lkd->...blk", x, self.w_skip) if self.skip_connection else 0.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(self._stack(x))[1].flatten(1)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """The predicted outputs from the features alone (without the skip connection's share)."""
        return self._unstack(self._decode(f.view(len(f), self.n_layers, self.per_layer)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted outputs for inputs x: what replaces the MLP outputs in the model."""
        stacked = self._stack(x)
        return self._unstack(self._decode(self._features(stacked)[1]) + self._skip(stacked))

    def encode_layer(self, s: int, x_s: torch.Tensor) -> torch.Tensor:
        """The features of layer s from its own input [..., d] alone (to run the model layer by layer)."""
        pre = F.linear(x_s, self.w_enc[s], self.b_enc[s])
        return JumpReLUFunction.apply(pre, self.threshold[s], self.bandwidth, self.ste_to_input)

    def decode_layer(self, t: int, features: dict[int, torch.Tensor], x_t: torch.Tensor) -> torch.Tensor:
        """Layer t's predicted output from the features of layers 0..t (`features[s]`) and, with a skip, its input."""
        writers = [s for s in range(t + 1) if t - s < self.n_targets(s)]
        y = self.b_dec[t] + sum(F.linear(features[s], self.w_dec[s][t - s]) for s in writers)
        return y + F.linear(x_t, self.w_skip[t]) if self.skip_connection else y

    def loss(
        self, x: torch.Tensor, sparsity_scale: float = 1.0, *, target: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x, target = self._stack(x), self._stack(target)
        pre, f = self._features(x)
        theta = self.threshold.unsqueeze(-3)
        y_hat = self._decode(f) + self._skip(x)
        reconstruction = (target - y_hat).pow(2).sum((-2, -1)).mean(-1)
        decoder_norm = self.decoder_norms().unsqueeze(-3)
        if self.penalty == "l0":
            sparsity = StepFunction.apply(pre, theta, self.bandwidth, self.ste_to_input).sum((-2, -1)).mean(-1)
        else:
            sparsity = torch.tanh(self.tanh_scale * f * decoder_norm).sum((-2, -1)).mean(-1)
        total = reconstruction + sparsity_scale * self.l1_coefficient * sparsity
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.preact_coefficient)):
            preact = (torch.relu(theta - pre) * decoder_norm).sum((-2, -1)).mean(-1)  # logged even when off
        if self.preact_coefficient:
            total = total + self.preact_coefficient * preact
        parts = {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity, "preact": preact}
        return parts, f.flatten(-2)

    @torch.no_grad()
    def raw_weights(self, s_in: list[float], s_out: list[float]) -> RawWeights:
        """Every layer's features, each input layer at its own scale and each target layer at its own."""
        inputs, outputs = torch.tensor(s_in), torch.tensor(s_out)
        return RawWeights(
            activation=self.raw_activation,
            w_enc=self.w_enc * inputs[:, None, None],
            b_enc=self.b_enc.clone(),
            pre_bias=torch.zeros(self.n_layers, self.d_in),
            threshold=self.threshold,
            w_dec=[w / outputs[s : s + len(w), None, None] for s, w in enumerate(self.w_dec)],
            b_dec=self.b_dec / outputs[:, None],
            w_skip=self.w_skip * (inputs / outputs)[:, None, None] if self.skip_connection else None,
        )

    @torch.no_grad()
    def after_step(self) -> None:
        if self.penalty == "l0":
            for w, norm in zip(self.w_dec, self.decoder_norms().unbind(-2)):
                w *= self.init_decoder_norm / norm.clamp_min(1e-12)[..., None, None, :]

    def flops_per_token(self) -> float:
        # See the module docstring: encoders 2dN, decoders 2dn a block, skip 2Ld^2 forward; backward twice that.
        d, n, L = self.d_in, self.n_features, self.n_layers
        blocks = sum(self.n_targets(s) for s in range(L))
        return 3 * (2 * d * n + 2 * d * self.per_layer * blocks + 2 * L * d**2 * self.skip_connection)
