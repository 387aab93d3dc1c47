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

TopK trains sparsely: the dense pre-activations are computed without autograd to choose the
latents, only the chosen ones carry gradients (`SelectedPreActivations`), and they are decoded
with an embedding-bag sum (`sparse_decode`; both in `pipeline.coders.topk_kernel`), so the decoder
costs O(rows * k * d) both ways and activations come back as `SparseActs`, never as a [rows x N]
tensor. The AuxK term works the same way for both kinds.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.coders.base import (
    BatchSparseActs,
    Coder,
    FeatureShard,
    SparseActs,
    affine,
    compute_dtype,
    expect,
    fired_in_batch,
    with_rows_axis,
)
from pipeline.coders.topk_kernel import SelectedPreActivations, batch_decode, row_major, row_top, sparse_decode
from pipeline.config import CoderConfig

# While dead latents may exist, how many steps pass between reads of the true idle maximum.
RECHECK_STEPS = 50


def _forget_idle_bound(coder: "TopKFamily", _incompatible_keys) -> None:
    coder.idle_bound = None  # the loaded counters may be anything


@dataclass
class TopKConfig(CoderConfig):
    kind: str = "topk"  # this kind
    k: int = 32  # active latents per row: exactly (topk) or on average over the batch (batchtopk)
    aux_k: int = 512  # dead latents AuxK reconstructs the residual with (capped at n_features)
    aux_k_coefficient: float = 0.03125  # weight of the AuxK loss against the reconstruction, 1/32 as in OpenAI's paper
    dead_tokens_threshold: int = 10_000_000  # tokens without firing after which a latent counts as dead for AuxK

    def __post_init__(self):
        super().__post_init__()
        expect(1 <= self.k <= self.n_features, "k", f"between 1 and n_features={self.n_features}", self.k)
        expect(self.aux_k >= 0, "aux_k", "a count >= 0", self.aux_k)
        expect(self.aux_k_coefficient >= 0, "aux_k_coefficient", "a weight >= 0", self.aux_k_coefficient)
        expect(self.dead_tokens_threshold > 0, "dead_tokens_threshold", "a positive count", self.dead_tokens_threshold)


@torch.no_grad()
def dead_top(pre: torch.Tensor, dead: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, ids) of each row's `m` largest pre-activations among the latents `dead` ([..., N]), -inf where a
    row has fewer dead latents: a selection whose size never depends on how many are dead (a GPU never waits)."""
    return pre.masked_fill(~dead.unsqueeze(-2), float("-inf")).topk(m, dim=-1)


@torch.no_grad()
def dead_top_among_columns(pre: torch.Tensor, dead: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`dead_top` over the dead latents' columns alone, as many as the arm with the most dead has (m at most).

    On a CPU the host reads that count for free, and selecting among a few dead columns costs a fraction
    of a selection over all N; where no more than m are dead it is no selection at all.
    """
    most = max(1, int(dead.sum(-1).max()))
    columns = (
        dead.int().topk(most, dim=-1).indices
    )  # [..., most]: every dead latent (and live ones, for arms with fewer)
    values = pre.gather(-1, columns.unsqueeze(-2).expand(*pre.shape[:-1], most))
    values = values.masked_fill(~dead.gather(-1, columns).unsqueeze(-2), float("-inf"))
    ids = columns.unsqueeze(-2).expand(values.shape)
    if most > m:
        values, chosen = values.topk(m, dim=-1)
        ids = ids.gather(-1, chosen)
    return values, ids


class TopKFamily(Coder):
    """What topk and batchtopk share: initialisation, pre-bias encoder, decoder, dead-latent count, AuxK."""

    sparsity_field, sparsity_tag, sparsity_is_l0 = "k", "k{}", True
    stackable = feature_sharding = encodes_less_b_dec = True

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
        # An upper bound on max(tokens_since_fired) kept on the host (None: unknown, as after loading a state).
        self.idle_bound: int | None = 0
        self.steps_to_recheck = 0
        self.register_load_state_dict_post_hook(_forget_idle_bound)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return affine(x - with_rows_axis(self.b_dec), self.w_enc, self.b_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, f: torch.Tensor | SparseActs | BatchSparseActs) -> torch.Tensor:
        if isinstance(f, SparseActs):
            return self.sparse_decode(f) + with_rows_axis(self.b_dec)
        if isinstance(f, BatchSparseActs):
            return batch_decode(self.w_dec, f) + with_rows_axis(self.b_dec)
        return affine(f.to(self.w_dec.dtype), self.w_dec, self.b_dec)

    def updating(self) -> bool:
        """Whether `loss` updates running statistics: a training step (training mode with gradients on).

        `evaluate` runs under no_grad, so held-out rows never change the saved statistics.
        """
        return self.training and torch.is_grad_enabled()

    def dead(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_tokens_threshold

    @torch.no_grad()
    def count_firing(self, f: torch.Tensor | SparseActs) -> None:
        rows = f.shape[-2]
        self.tokens_since_fired += rows
        self.tokens_since_fired.masked_fill_(fired_in_batch(f), 0)
        self.add_idle_tokens(rows)

    def add_idle_tokens(self, n: int) -> None:
        """Raises the host-side bound after `tokens_since_fired` grew by at most `n`."""
        if self.idle_bound is not None:
            self.idle_bound += n

    def may_have_dead(self) -> bool:
        """Whether some latent may be dead, reading the device only now and then.

        Reading `tokens_since_fired` on the host waits for the device, which stalls every step of a
        fast GPU. Below the threshold the host-side bound rules dead latents out without a read.
        Once it reaches it, the true maximum is read; if some latent is dead, the next read comes
        `RECHECK_STEPS` calls later, and in between AuxK runs in the form that needs no count of
        the dead (see `auxk_loss`); if none is, the bound restarts from the true maximum.
        """
        known = self.idle_bound is not None
        if known and self.idle_bound < self.dead_tokens_threshold:
            return False
        self.steps_to_recheck -= 1
        if not known or self.steps_to_recheck < 0:
            self.idle_bound = int(self.tokens_since_fired.max())
            dead = self.idle_bound >= self.dead_tokens_threshold
            self.steps_to_recheck = RECHECK_STEPS if dead else 0
        return self.idle_bound >= self.dead_tokens_threshold

    @torch.no_grad()
    def selection_pre(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activations a sparse training step selects on: in the products' dtype, without autograd."""
        dtype = compute_dtype(x)
        centred = (x - self.b_dec.unsqueeze(-2)).to(dtype)
        return affine(centred, self.w_enc.to(dtype), self.b_enc.to(dtype))

    def selected_pre(self, x: torch.Tensor, pre: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[..., rows, k] pre-activations of the latents in `index`, with gradients reaching only their encoder rows."""
        flat = row_major(index, self.n_features)
        return SelectedPreActivations.apply(x, self.w_enc, self.b_enc, self.b_dec, pre, flat).view(index.shape)

    def sparse_decode(self, f: SparseActs) -> torch.Tensor:
        """W_dec f without the decoder bias, summing only the active columns (see `topk_kernel.sparse_decode`)."""
        return sparse_decode(self.w_dec, f)

    def auxk_loss(self, pre: torch.Tensor, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """mean_rows ||e - e_hat||^2 with e_hat from the top `aux_k` dead latents; 0 when none is dead.

        On a GPU the selection always takes min(aux_k, N) latents, so its size never depends on how
        many are dead (which only the device knows; `dead_top`); a CPU selects among the dead columns
        alone (`dead_top_among_columns`). Where fewer are dead, the live latents a selection also picks
        (at -inf) get activation 0, and with none dead the whole term is multiplied by 0.
        """
        if self.aux_k == 0 or not self.may_have_dead():
            return residual.new_zeros(residual.shape[:-2])  # one per arm of a stack
        dead = self.dead()
        select = dead_top_among_columns if pre.device.type == "cpu" else dead_top
        top, index = select(pre, dead, min(self.aux_k, self.n_features))
        values = torch.relu(self.selected_pre(x, pre, index)).masked_fill(top.isneginf(), 0.0)
        f_aux = SparseActs(index, values, self.n_features)
        return (residual - self.sparse_decode(f_aux)).pow(2).sum(-1).mean(-1) * dead.any(-1)

    def after_activation(self, f: torch.Tensor) -> None:
        """Hook for running statistics of the activation, called by `loss` on training steps."""

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pre = self.pre_activation(x)
        f = self.activate(pre)
        x_hat = self.decode(f)
        if self.updating():
            self.count_firing(f)
            self.after_activation(f.detach())
        return self.loss_parts(x, x_hat, pre.detach(), sparsity_scale), f

    def loss_parts(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, sparsity_scale: float) -> dict:
        reconstruction = (x - x_hat).pow(2).sum(-1).mean(-1)
        auxk = self.auxk_loss(pre, x, (x - x_hat).detach())
        total = reconstruction + sparsity_scale * self.aux_k_coefficient * auxk
        return {"loss": total, "reconstruction": reconstruction, "auxk": auxk}

    @torch.no_grad()
    def after_step(self) -> None:
        self.w_dec /= self.w_dec.norm(dim=-2, keepdim=True).clamp_min(1e-12)

    def flops_per_token(self) -> float:
        # Dense encoder 2*d*N forward; sparse decoder (k active latents per row) 2*d*k forward;
        # backward twice the forward. The AuxK decoder (at most 2*d*aux_k forward, only while some
        # latents are dead) and the top-k selection are not counted.
        return 3 * (2 * self.d_in * self.n_features + 2 * self.d_in * self.k)

    # Split over ranks, a row's k largest pre-activations are chosen among every rank's features: the
    # rank-local selection, counters and AuxK below take the collectives of `shard`.

    def sharded_activate(self, pre: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        return shard.top(pre, self.k, shard.widest)

    def sharded_pre_activation(self, x: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        return nn.functional.linear(shard.shared(x - self.b_dec), self.w_enc, self.b_enc)

    def sharded_encode(self, x: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        return self.sharded_activate(self.sharded_pre_activation(x, shard), shard)

    def sharded_loss(self, x: torch.Tensor, sparsity_scale: float, shard: FeatureShard):
        pre = self.sharded_pre_activation(x, shard)
        f = self.sharded_activate(pre, shard)
        x_hat = self.sharded_decode(f, shard)
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        if self.updating():
            self.count_firing(f)  # the whole batch against this rank's features: its counters are exact
            self.sharded_after_activation(f.detach(), shard)
        auxk = self.sharded_auxk(pre, (x - x_hat).detach(), shard)
        total = reconstruction + sparsity_scale * self.aux_k_coefficient * auxk
        return {"loss": total, "reconstruction": reconstruction, "auxk": auxk}, f

    def sharded_after_activation(self, f: torch.Tensor, shard: FeatureShard) -> None:
        """`after_activation` over every rank's activations; topk keeps no statistics of them."""

    def sharded_auxk(self, pre: torch.Tensor, residual: torch.Tensor, shard: FeatureShard) -> torch.Tensor:
        """The AuxK loss with the `aux_k` largest pre-activations among the dead latents of all ranks."""
        dead = self.dead()
        n_aux = min(self.aux_k, int(shard.reduce(dead.sum())))
        if n_aux == 0:
            return residual.new_zeros(())
        f_aux = shard.top(pre.masked_fill(~dead, -math.inf), n_aux, shard.widest)
        return (residual - shard.sum(nn.functional.linear(f_aux, self.w_dec))).pow(2).sum(-1).mean()


class TopKSAE(TopKFamily):
    kind = "topk"
    config_class = TopKConfig
    raw_activation = "topk"

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

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], SparseActs]:
        pre = self.selection_pre(x)
        index = row_top(pre, self.k)
        f = SparseActs(index, torch.relu(self.selected_pre(x, pre, index)), self.n_features)
        if self.updating():
            self.count_firing(f)
        return self.loss_parts(x, self.sparse_decode(f) + self.b_dec.unsqueeze(-2), pre, sparsity_scale), f
