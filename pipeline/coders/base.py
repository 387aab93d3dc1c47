"""What every sparse coder is: encode, decode, a loss of named parts, an analytic FLOP count, safetensors I/O."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

WEIGHTS = "coder.safetensors"
CONFIG = "config.json"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of matrix products on `x`'s device: autocast's when it is on (bfloat16 on GPUs), else float32."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32


def arm_offsets(index: torch.Tensor, n_features: int) -> torch.Tensor:
    """Latent ids of [..., rows, k] `index` as ids into all arms' latents laid end to end ([arms * n_features]).

    A stack of same-shape coders (`pipeline.train.stack`) has a leading arm dimension; a single
    coder's ids come back unchanged.
    """
    if index.dim() == 2:
        return index
    arms = torch.arange(index.shape[:-2].numel(), device=index.device).view(*index.shape[:-2], 1, 1)
    return index + n_features * arms


@dataclass
class SparseActs:
    """Feature activations kept as each row's active latents, so no [rows x features] tensor is formed."""

    index: torch.Tensor  # [rows, k] latent ids ([arms, rows, k] for a stack of coders)
    values: torch.Tensor  # [rows, k] their activations (0 for a selected latent that did not fire); [arms, rows, k] for a stack
    n_features: int

    @property
    def shape(self) -> tuple[int, ...]:
        return *self.index.shape[:-1], self.n_features

    def dense(self) -> torch.Tensor:
        out = self.values.new_zeros(self.shape)
        return out.scatter_(-1, self.index, self.values)

    def fired(self) -> torch.Tensor:
        """[n_features] bool ([arms, n_features] for a stack): the latents active in some row."""
        arms = self.index.shape[:-2]
        ids = arm_offsets(self.index, self.n_features).flatten()
        # Summing with index_add_, unlike bincount or a boolean mask, does not wait for the device.
        counts = torch.zeros(arms.numel() * self.n_features, dtype=torch.int32, device=ids.device)
        counts.index_add_(0, ids, (self.values > 0).flatten().int())
        return (counts > 0).view(*arms, self.n_features)


def fired_in_batch(f: "torch.Tensor | SparseActs") -> torch.Tensor:
    """[..., n_features] bool: the latents active in some row of [..., rows, n_features] activations, per arm of a stack."""
    return f.fired() if isinstance(f, SparseActs) else (f > 0).any(-2)


def with_rows_axis(v: torch.Tensor) -> torch.Tensor:
    """A coder's vector ([dim]) as it is; a stack's ([arms, dim]) with a rows axis, to broadcast against [arms, rows, dim]."""
    return v if v.dim() == 1 else v.unsqueeze(-2)


def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x W^T + b for one coder's weights (w [out, in]) or a stack's ([arms, out, in], with x shared or per arm)."""
    if w.dim() == 2:
        return nn.functional.linear(x, w, b)
    return torch.baddbmm(b.unsqueeze(-2), x.expand(len(w), *x.shape[-2:]), w.mT)


class Coder(nn.Module):
    """A sparse dictionary over `d_in`-dimensional inputs with `n_features` latents."""

    kind = ""

    def __init__(self, d_in: int, n_features: int, **hparams):
        super().__init__()
        self.d_in, self.n_features, self.hparams = d_in, n_features, hparams

    def init_tied_weights(self, decoder_norm: float) -> None:
        """Decoder columns in random directions of norm `decoder_norm`, the encoder its transpose, zero biases."""
        w_dec = torch.randn(self.d_in, self.n_features)
        w_dec *= decoder_norm / w_dec.norm(dim=0, keepdim=True)
        self.w_dec = nn.Parameter(w_dec)
        self.w_enc = nn.Parameter(w_dec.t().contiguous())  # row-major, the layout of its gradients
        self.b_enc = nn.Parameter(torch.zeros(self.n_features))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"loss": total, and each named part}, feature activations); `sparsity_scale` ramps the penalty in."""
        raise NotImplementedError

    @classmethod
    def training_flops(cls, d_in: int, n_features: int) -> float:
        """Training FLOPs per input row: forward plus backward (twice the forward), matrix products only."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step (e.g. to renormalise decoder columns); no-op by default."""

    def flops_per_token(self) -> float:
        return self.training_flops(self.d_in, self.n_features)

    def config(self) -> dict:
        return {"kind": self.kind, "d_in": self.d_in, "n_features": self.n_features, **self.hparams}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(self.config(), indent=1))
