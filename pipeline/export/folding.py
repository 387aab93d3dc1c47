"""A trained coder's weights as they act on the model's raw activations, one form for every kind.

Training multiplies each array by its own scale s (E||s x||^2 = d, recorded in the run's
`coder/source.json`). A coder that maps s_in x to s_out y maps raw x to raw y with

    W_enc' = s_in W_enc,   pre_bias' = pre_bias / s_in,   W_dec' = W_dec / s_out,
    b_dec' = b_dec / s_out,   W_skip' = W_skip s_in / s_out

and encoder bias and thresholds unchanged: its features on raw activations are its features on
scaled ones, so no format needs a scaling tensor. `Folded` holds L layers of features (1 for every
kind but a CLT); `w_dec[s][j]` writes the features of layer s to target layer s + j.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.coders.base import Coder
from pipeline.coders.batchtopk import BatchTopKSAE
from pipeline.coders.clt import CrossLayerTranscoder
from pipeline.coders.jumprelu import JumpReluSAE
from pipeline.coders.relu import ReluSAE
from pipeline.coders.topk import TopKSAE


@dataclass
class Folded:
    """f = act(W_enc (x - pre_bias) + b_enc), y_t = sum_s W_dec[s][t - s] f_s + b_dec[t] (+ W_skip[t] x_t), raw x, y."""

    activation: str  # relu, topk (the k largest, then ReLU) or jumprelu (pre * (pre > threshold))
    w_enc: torch.Tensor  # [L, n, d_in]
    b_enc: torch.Tensor  # [L, n]
    pre_bias: torch.Tensor  # [L, d_in]: subtracted from the input before the encoder (topk and batchtopk: b_dec)
    threshold: torch.Tensor  # [L, n]: jumprelu's per-feature threshold, in pre-activation units (0 otherwise)
    w_dec: list[torch.Tensor]  # L tensors [L - s, d_out, n]
    b_dec: torch.Tensor  # [L, d_out]
    w_skip: torch.Tensor | None  # [L, d_out, d_in] or None
    k: int = 0  # topk: active latents per row

    @property
    def n_layers(self) -> int:
        return len(self.w_enc)


def _sae(coder: Coder, activation: str, threshold: torch.Tensor, s: float, pre_bias: torch.Tensor) -> Folded:
    n = coder.n_features
    return Folded(
        activation=activation,
        w_enc=(coder.w_enc * s)[None],
        b_enc=coder.b_enc[None],
        pre_bias=(pre_bias / s)[None],
        threshold=threshold.expand(n)[None],
        w_dec=[(coder.w_dec / s)[None]],
        b_dec=(coder.b_dec / s)[None],
        w_skip=None,
        k=getattr(coder, "k", 0),
    )


def _relu(coder: ReluSAE, s_in: list[float], s_out: list[float]) -> Folded:
    return _sae(coder, "relu", torch.zeros(()), s_in[0], torch.zeros(coder.d_in))


def _topk(coder: TopKSAE, s_in: list[float], s_out: list[float]) -> Folded:
    return _sae(coder, "topk", torch.zeros(()), s_in[0], coder.b_dec)


def _batchtopk(coder: BatchTopKSAE, s_in: list[float], s_out: list[float]) -> Folded:
    # At inference a BatchTopK SAE (and a Matryoshka one, its subclass) keeps each pre-activation above its learned
    # threshold: a JumpReLU.
    return _sae(coder, "jumprelu", coder.threshold, s_in[0], coder.b_dec)


def _jumprelu(coder: JumpReluSAE, s_in: list[float], s_out: list[float]) -> Folded:
    return _sae(coder, "jumprelu", coder.threshold, s_in[0], torch.zeros(coder.d_in))


def _clt(coder: CrossLayerTranscoder, s_in: list[float], s_out: list[float]) -> Folded:
    inputs, outputs = torch.tensor(s_in), torch.tensor(s_out)
    return Folded(
        activation="jumprelu",
        w_enc=coder.w_enc * inputs[:, None, None],
        b_enc=coder.b_enc.clone(),
        pre_bias=torch.zeros(coder.n_layers, coder.d_in),
        threshold=coder.threshold,
        w_dec=[w / outputs[s:, None, None] for s, w in enumerate(coder.w_dec)],
        b_dec=coder.b_dec / outputs[:, None],
        w_skip=coder.w_skip * (inputs / outputs)[:, None, None] if coder.skip_connection else None,
    )


# Most derived class first: a transcoder is a one-layer CLT.
_FOLDS: dict[type, Callable[[Coder, list[float], list[float]], Folded]] = {
    BatchTopKSAE: _batchtopk,
    TopKSAE: _topk,
    JumpReluSAE: _jumprelu,
    ReluSAE: _relu,
    CrossLayerTranscoder: _clt,
}


@torch.no_grad()
def fold(coder: Coder, source: dict) -> Folded:
    """`coder`'s weights on raw activations, with the scales `source` (its `source.json`) records."""
    scales = source["scales"]
    s_in = [scales[name] for name in source["inputs"]]
    s_out = [scales[name] for name in source["targets"]]
    fold_kind = next(f for cls, f in _FOLDS.items() if isinstance(coder, cls))
    folded = fold_kind(coder.eval(), s_in, s_out)
    return Folded(**{k: _plain(v) for k, v in vars(folded).items()})


def _plain(value):
    """A tensor as a contiguous float32 copy of its own (a list of them for the decoders); other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().contiguous().clone()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
