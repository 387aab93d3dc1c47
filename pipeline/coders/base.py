"""What every sparse coder is: encode, decode, a loss of named parts, an analytic FLOP count, safetensors I/O,
and the declarations the rest of the pipeline reads instead of asking a kind's name."""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import nn

from pipeline.coders.raw import RawWeights, sae_raw_weights
from pipeline.config import CoderConfig
from pipeline.errors import ConfigError

WEIGHTS = "coder.safetensors"
CONFIG = "config.json"
SOURCE = "source.json"  # what the coder was trained on (`activations.arrays.provenance`), so it exports without a store


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
    # [rows, k] their activations (0 for a selected latent that did not fire); [arms, rows, k] for a stack
    values: torch.Tensor
    n_features: int

    @property
    def shape(self) -> tuple[int, ...]:
        return *self.index.shape[:-1], self.n_features

    def dense(self) -> torch.Tensor:
        out = self.values.new_zeros(self.shape)
        return out.scatter_(-1, self.index, self.values)

    def fired(self) -> torch.Tensor:
        """[n_features] bool ([arms, n_features] for a stack): the latents active in some row."""
        return _fired(self.index, self.values, self.n_features)


@dataclass
class BatchSparseActs:
    """Feature activations of a selection over the whole batch (BatchTopK): each row keeps any number of latents.

    The selected entries are ids into the batch's [rows x features] activations laid out row by row,
    in ascending order, so each row's entries are consecutive.
    """

    flat: torch.Tensor  # [selected] ids row * n_features + latent, ascending ([arms, selected] for a stack)
    values: torch.Tensor  # [selected] their activations (0 for a selected latent that did not fire)
    rows: int
    n_features: int

    @property
    def shape(self) -> tuple[int, ...]:
        return *self.flat.shape[:-1], self.rows, self.n_features

    def dense(self) -> torch.Tensor:
        out = self.values.new_zeros(*self.flat.shape[:-1], self.rows * self.n_features)
        return out.scatter_(-1, self.flat, self.values).view(self.shape)

    def fired(self) -> torch.Tensor:
        return _fired((self.flat % self.n_features).unsqueeze(-2), self.values.unsqueeze(-2), self.n_features)


def _fired(index: torch.Tensor, values: torch.Tensor, n_features: int) -> torch.Tensor:
    """[n_features] bool ([arms, n_features] for a stack): the latents of [..., rows, k] `index` valued above 0."""
    arms = index.shape[:-2]
    ids = arm_offsets(index, n_features).flatten()
    # Summing with index_add_, unlike bincount or a boolean mask, does not wait for the device.
    counts = torch.zeros(arms.numel() * n_features, dtype=torch.int32, device=ids.device)
    counts.index_add_(0, ids, (values > 0).flatten().int())
    return (counts > 0).view(*arms, n_features)


def fired_in_batch(f: "torch.Tensor | SparseActs | BatchSparseActs") -> torch.Tensor:
    """[..., n_features] bool: the latents active in some row of [..., rows, n_features] activations, per arm
    of a stack.

    Dense activations are reduced by their largest entry per latent, one read of them: `(f > 0).any(-2)` also
    writes and reads a mask of their size, and took 8 times as long on a CPU (1024 x 8192 rows of a step).
    """
    return f.amax(-2) > 0 if isinstance(f, torch.Tensor) else f.fired()


def with_rows_axis(v: torch.Tensor) -> torch.Tensor:
    """A coder's vector ([dim]) as it is; a stack's ([arms, dim]) with a rows axis, to broadcast against
    [arms, rows, dim]."""
    return v if v.dim() == 1 else v.unsqueeze(-2)


def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x W^T + b for one coder's weights (w [out, in]) or a stack's ([arms, out, in], with x shared or per arm)."""
    if w.dim() == 2:
        return nn.functional.linear(x, w, b)
    return torch.baddbmm(b.unsqueeze(-2), x.expand(len(w), *x.shape[-2:]), w.mT)


def expect(ok: bool, field: str, expected: str, got: object) -> None:
    """ConfigError naming the coder field `field` unless `ok`, for a kind config's checks of its own values."""
    if not ok:
        raise ConfigError(f"coder.{field}: expected {expected}, got {got!r}")


class FeatureShard(Protocol):
    """Collectives over ranks that each hold a slice of one coder's features (`pipeline.train.sharded`)."""

    widest: int  # features in the largest slice

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's partial `tensor`, differentiable, for a loss every rank computes identically."""

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """`x` unchanged, read by every rank's features: its gradient sums over ranks."""

    def top(self, values: torch.Tensor, k: int, widest: int) -> torch.Tensor:
        """ReLU of the k largest entries of the last dimension over all ranks' slices (the largest `widest` wide)."""

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`tensor` reduced over ranks (sum, min or max), in place and without gradient."""


class Coder(nn.Module):
    """A sparse dictionary over `d_in`-dimensional inputs with `n_features` latents.

    A kind declares itself here, in its class: the rest of the pipeline reads these and never a kind's name.
    """

    kind: ClassVar[str] = ""  # the name `coder.kind` and a sweep file's `kind:` give
    config_class: ClassVar[type[CoderConfig]] = CoderConfig  # its configuration: the fields it reads from `coder`
    sparsity_field: ClassVar[str] = "l1_coefficient"  # the field a sweep's `sparsity` list sets
    sparsity_tag: ClassVar[str] = "l1-{:g}"  # how a run id spells that setting (format string of its value)
    # the sparsity field is itself the mean L0 per token (k), so a sweep's `target_l0` sets it; else a penalty
    sparsity_is_l0: ClassVar[bool] = False
    stackable: ClassVar[bool] = False  # its loss takes weights stacked along a leading arm dimension (train.stack)
    per_arm_fields: ClassVar[tuple[str, ...]] = ()  # fields (and attributes) that may differ between stacked arms
    target_field: ClassVar[str] = ""  # train field naming the arrays it predicts; empty: it reconstructs train.hook
    layered: ClassVar[bool] = False  # spans several layers: built with the number of layers train.layers lists
    cross_layer: ClassVar[bool] = False  # a layer's features write to later layers' outputs too (a CLT)
    rows_independent: ClassVar[bool] = True  # a row's loss ignores the other rows, so ddp may split a batch
    feature_sharding: ClassVar[bool] = False  # implements `sharded_loss`, for train.parallel=features
    renamed: ClassVar[dict[str, str]] = {}  # config field -> constructor keyword, where the two names differ
    encodes_less_b_dec: ClassVar[bool] = False  # its encoder reads x - b_dec (so moving b_dec moves its input too)
    raw_activation: ClassVar[str] = "relu"  # its inference rule, as exports write it: relu, topk or jumprelu

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
    def hparams_of(cls, cfg: CoderConfig) -> dict:
        """The constructor keywords beyond d_in and n_features: the values of its config's own fields in `cfg`."""
        own = [f.name for f in fields(cls.config_class) if f.name not in ("kind", "n_features")]
        return {cls.renamed.get(name, name): getattr(cfg, name) for name in own}

    def flops_per_token(self) -> float:
        """Training FLOPs per input row: forward plus backward (twice the forward), matrix products only."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called by the trainer after each optimiser step (e.g. to renormalise decoder columns); no-op by default."""

    def calibrate(self, inputs: list[torch.Tensor]) -> None:
        """Called by the trainer once training ends, before evaluation, with the held-out rows' inputs: a kind
        whose inference differs from its training sets what inference reads from them; no-op by default."""

    def sharded_calibrate(self, inputs: list[torch.Tensor], shard: FeatureShard) -> None:
        """As `calibrate`, when this coder holds one rank's slice of the features (see `sharded_loss`)."""

    @torch.no_grad()
    def fold_input_mean(self, mean: torch.Tensor) -> None:
        """Makes this coder, trained on inputs less `mean`, act on the inputs themselves: the same features from
        x as it had from x - mean, and `mean` added back to its output (an SAE's; `train.center`)."""
        if not self.encodes_less_b_dec:
            self.b_enc -= self.w_enc @ mean
        self.b_dec += mean

    def decoder_columns(self) -> list[torch.Tensor]:
        """Each group of features that write to the same space, as [dim, features]: one feature's decoder vector
        per column. One group, `w_dec` [d_in, n_features], unless a kind overrides it."""
        return [self.w_dec]

    @torch.no_grad()
    def raw_weights(self, s_in: list[float], s_out: list[float]) -> RawWeights:
        """Its weights as they act on raw activations, given each array's training scale (`pipeline.coders.raw`):
        an SAE's by default; a kind whose form differs overrides it."""
        return sae_raw_weights(self, s_in[0])

    def encode_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The features of `layer` from its input alone, so splicing can run the coder inside the model layer by layer.

        A coder of one layer (every kind but a CLT) has only layer 0, and encodes as usual.
        """
        return self.encode(x)

    def decode_layer(self, layer: int, features: dict[int, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """`layer`'s predicted array from the features of layers 0..layer (`features[s]`) and its input `x`.

        An SAE's prediction is its reconstruction, which needs only its own features.
        """
        return self.decode(features[layer])

    def sharded_loss(
        self, x: torch.Tensor, sparsity_scale: float, shard: FeatureShard
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """As `loss`, when this coder holds one rank's slice of the features: the whole coder's loss parts (equal on
        every rank) and this rank's activations. A kind with `feature_sharding` implements it from its formula,
        since its own `loss` sees only its own features."""
        raise NotImplementedError(f"a {self.kind} coder cannot be trained with its features split over ranks")

    def sharded_encode(self, x: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        """This rank's feature activations when the features are split over ranks (see `sharded_loss`)."""
        raise NotImplementedError(f"a {self.kind} coder cannot be trained with its features split over ranks")

    def sharded_decode(self, f: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        """The whole reconstruction from each rank's activations of its own decoder columns."""
        return shard.sum(nn.functional.linear(f, self.w_dec)) + self.b_dec

    def config(self) -> dict:
        return {"kind": self.kind, "d_in": self.d_in, "n_features": self.n_features, **self.hparams}

    def save(self, folder: Path, source: dict | None = None) -> None:
        """Weights and config into `folder`, and with `source` what the coder was trained on."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(self.config(), indent=1))
        if source is not None:
            (folder / SOURCE).write_text(json.dumps(source, indent=1))
