"""A coder's weights as they act on the model's raw activations: the one form every export format is written from.

Training multiplies each array by its own scale s (E||s x||^2 = d, recorded in the run's
`coder/source.json`). A coder that maps s_in x to s_out y maps raw x to raw y with

    W_enc' = s_in W_enc,   pre_bias' = pre_bias / s_in,   W_dec' = W_dec / s_out,
    b_dec' = b_dec / s_out,   W_skip' = W_skip s_in / s_out

and encoder bias and thresholds unchanged: its features on raw activations are its features on
scaled ones, so no format needs a scaling tensor. Each kind gives its own (`Coder.raw_weights`).
"""

from dataclasses import dataclass

import torch


@dataclass
class RawWeights:
    """f = act(W_enc (x - pre_bias) + b_enc), y_t = sum_s W_dec[s][t - s] f_s + b_dec[t] (+ W_skip[t] x_t), raw x, y.

    L layers of features (1 for every kind but a CLT or PLT); `w_dec[s][j]` writes layer s's features to layer s + j.
    """

    activation: str  # relu, topk (the k largest, then ReLU) or jumprelu (pre * (pre > threshold))
    w_enc: torch.Tensor  # [L, n, d_in]
    b_enc: torch.Tensor  # [L, n]
    pre_bias: torch.Tensor  # [L, d_in]: subtracted from the input before the encoder (topk and batchtopk: b_dec)
    threshold: torch.Tensor  # [L, n]: jumprelu's per-feature threshold, in pre-activation units (0 otherwise)
    w_dec: list[torch.Tensor]  # L tensors [L - s, d_out, n] ([1, d_out, n] where layers write only to themselves)
    b_dec: torch.Tensor  # [L, d_out]
    w_skip: torch.Tensor | None  # [L, d_out, d_in] or None
    k: int = 0  # topk: active latents per row

    @property
    def n_layers(self) -> int:
        return len(self.w_enc)

    def layer(self, i: int) -> "RawWeights":
        """Layer i's features alone, as a one-layer coder's weights; for a coder whose layers write only to
        themselves (`w_dec[i]` one block), where they are a whole transcoder."""
        one = {name: getattr(self, name)[i : i + 1] for name in ("w_enc", "b_enc", "pre_bias", "threshold", "b_dec")}
        w_skip = self.w_skip[i : i + 1] if self.w_skip is not None else None
        return RawWeights(activation=self.activation, w_dec=[self.w_dec[i]], w_skip=w_skip, k=self.k, **one)

    def plain(self) -> "RawWeights":
        """The same weights as contiguous float32 tensors of their own, detached from the coder."""
        return RawWeights(**{name: _plain(value) for name, value in vars(self).items()})


def sae_raw_weights(coder, s: float) -> RawWeights:
    """An SAE's raw-activation weights (one scale: it reconstructs what it reads), from what its class declares:
    its inference rule (`raw_activation`), whether its encoder reads x - b_dec, and its threshold or k."""
    n = coder.n_features
    jumps = coder.raw_activation == "jumprelu"
    pre_bias = coder.b_dec if coder.encodes_less_b_dec else torch.zeros(coder.d_in)
    return RawWeights(
        activation=coder.raw_activation,
        w_enc=(coder.w_enc * s)[None],
        b_enc=coder.b_enc[None],
        pre_bias=(pre_bias / s)[None],
        threshold=(coder.threshold if jumps else torch.zeros(())).expand(n)[None],
        w_dec=[(coder.w_dec / s)[None]],
        b_dec=(coder.b_dec / s)[None],
        w_skip=None,
        k=coder.k if coder.raw_activation == "topk" else 0,
    )


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.detach().float().contiguous().clone()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
