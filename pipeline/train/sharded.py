"""A coder whose features are split over ranks: rank r holds features [start, stop) of every per-feature tensor.

Each rank keeps the rows of `w_enc`, the entries of `b_enc` (and of any other per-feature tensor,
such as jumprelu's thresholds or topk's firing counters) and the columns of `w_dec` of its slice;
`b_dec` is replicated. Every rank sees the whole batch, encodes it with its own features, decodes
a partial reconstruction and the partials are summed over ranks, so the loss is the whole coder's
loss and is the same on every rank. Penalties are sums over features, so each rank sums its own
and those are summed too. TopK picks the k largest pre-activations of a row over all ranks: each
rank offers its own k largest as candidates and every rank ranks the gathered candidates.

The sharded forward is written here from each kind's formula and its public parameters and
hyperparameters, because a coder's own `loss` sees only its own features.
"""

import math

import torch
from torch import nn

from pipeline.coders.base import Coder
from pipeline.coders.jumprelu import JumpReLUFunction, StepFunction
from pipeline.coders.registry import coder_class
from pipeline.errors import ConfigError
from pipeline.distributed.process_group import World, all_gather, all_reduce_, broadcast, shared_input, sum_over_ranks, world

SHARDABLE = ("relu", "jumprelu", "topk", "batchtopk")


def bounds(n_features: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s features; slices differ in size by at most one feature."""
    return rank * n_features // world_size, (rank + 1) * n_features // world_size


def feature_dims(coder: Coder) -> dict[str, int | None]:
    """Which dimension of each state tensor runs over the features; None for tensors every feature shares.

    Found by building the kind at two tiny widths and seeing which dimensions change, so a tensor
    a coder adds later is sliced correctly without being listed here.
    """
    hparams = {**coder.hparams, **({"k": 1, "aux_k": 1} if "k" in coder.hparams else {})}
    with torch.random.fork_rng():
        narrow, wide = (type(coder)(1, n, **hparams).state_dict() for n in (2, 3))
    return {
        name: next((i for i, (a, b) in enumerate(zip(narrow[name].shape, wide[name].shape)) if a != b), None)
        for name in narrow
    }


def _keep_slice(coder: Coder, dims: dict[str, int | None], start: int, stop: int) -> None:
    """Turns `coder` into its features [start, stop), in place, so the whole coder is never copied."""
    for name, tensor in coder.state_dict(keep_vars=True).items():
        if dims[name] is None:
            continue
        module_name, _, attr = name.rpartition(".")
        piece = tensor.detach().narrow(dims[name], start, stop - start).clone()
        setattr(
            coder.get_submodule(module_name), attr, nn.Parameter(piece) if isinstance(tensor, nn.Parameter) else piece
        )
    coder.n_features = stop - start


class ShardedCoder(nn.Module):
    """This rank's slice of a coder of `n_features` features, trained as if it were the whole coder."""

    def __init__(self, whole: Coder, world: World):
        super().__init__()
        if whole.kind not in SHARDABLE:
            raise ConfigError(
                f"train.parallel: features sharding supports coder.kind {', '.join(SHARDABLE)}, not {whole.kind!r}"
            )
        if whole.n_features < world.size:
            raise ConfigError(f"coder.n_features: {whole.n_features} features cannot be split over {world.size} ranks")
        self.kind, self.d_in, self.n_features, self.world = whole.kind, whole.d_in, whole.n_features, world
        self.start, self.stop = bounds(whole.n_features, world.size, world.rank)
        self.widest = -(-whole.n_features // world.size)  # features in the largest slice
        self.feature_dims = feature_dims(whole)
        self._flops_per_token = whole.flops_per_token()
        self._config = whole.config()
        _keep_slice(whole, self.feature_dims, self.start, self.stop)
        self.local = whole

    def flops_per_token(self) -> float:
        return self._flops_per_token

    def config(self) -> dict:
        return self._config

    def after_step(self) -> None:
        self.local.after_step()  # per-column renormalisation: each rank's columns are its own

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        c = self.local
        if self.kind in ("topk", "batchtopk"):
            return nn.functional.linear(shared_input(x - c.b_dec), c.w_enc, c.b_enc)
        return nn.functional.linear(x, c.w_enc, c.b_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        c = self.local
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "jumprelu":
            return JumpReLUFunction.apply(pre, c.threshold, c.bandwidth)
        if self.kind == "topk":
            return top_over_ranks(pre, c.k, self.widest)
        if not self.training:
            return c.activate(pre)  # batchtopk at evaluation: the learned threshold, feature by feature
        return top_over_ranks(torch.relu(pre).flatten(), c.k * pre.shape[0], self.widest * pre.shape[0]).view_as(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def partial_decode(self, f: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(nn.functional.linear(f, self.local.w_dec))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.partial_decode(f) + self.local.b_dec

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The whole coder's loss parts (equal on every rank) and this rank's feature activations."""
        pre = self.pre_activation(x)
        f = self.activate(pre)
        x_hat = self.decode(f)
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        if self.kind in ("topk", "batchtopk"):
            return self._topk_parts(x, x_hat, pre, f, reconstruction, sparsity_scale), f
        return self._penalised_parts(pre, f, reconstruction, sparsity_scale), f

    def _penalised_parts(self, pre, f, reconstruction, sparsity_scale) -> dict[str, torch.Tensor]:
        c = self.local
        decoder_norm = c.w_dec.norm(dim=0)
        if self.kind == "relu":
            sparsity = sum_over_ranks((f * decoder_norm).sum(-1).mean())
            return {
                "loss": reconstruction + sparsity_scale * c.l1_coefficient * sparsity,
                "reconstruction": reconstruction,
                "sparsity": sparsity,
            }
        theta = c.threshold
        if c.penalty == "l0":
            sparsity = sum_over_ranks(StepFunction.apply(pre, theta, c.bandwidth).sum(-1).mean())
        else:
            sparsity = sum_over_ranks(torch.tanh(c.tanh_scale * f * decoder_norm).sum(-1).mean())
        total = reconstruction + sparsity_scale * c.l1_coefficient * sparsity
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(c.preact_coefficient)):
            preact = sum_over_ranks((torch.relu(theta - pre) * decoder_norm).sum(-1).mean())
        if c.preact_coefficient:
            total = total + c.preact_coefficient * preact
        return {"loss": total, "reconstruction": reconstruction, "sparsity": sparsity, "preact": preact}

    def _topk_parts(self, x, x_hat, pre, f, reconstruction, sparsity_scale) -> dict[str, torch.Tensor]:
        c = self.local
        if c.updating():
            c.count_firing(f)  # the whole batch against this rank's features: its counters are exact
            if self.kind == "batchtopk":
                self._update_threshold(f.detach())
        auxk = self._auxk(pre, (x - x_hat).detach())
        return {
            "loss": reconstruction + sparsity_scale * c.aux_k_coefficient * auxk,
            "reconstruction": reconstruction,
            "auxk": auxk,
        }

    def _update_threshold(self, f: torch.Tensor) -> None:
        # BatchTopK's running threshold follows the smallest positive activation kept in the whole
        # batch; handing it the minimum over all ranks makes every rank take the same step.
        positive = torch.where(f > 0, f, torch.full_like(f, math.inf))
        self.local.after_activation(all_reduce_(positive.min().reshape(1), "min"))

    def _auxk(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """OpenAI's AuxK loss with the `aux_k` largest pre-activations among the dead latents of all ranks."""
        c = self.local
        dead = c.dead()
        n_aux = min(c.aux_k, int(all_reduce_(dead.sum())))
        if n_aux == 0:
            return residual.new_zeros(())
        f_aux = top_over_ranks(pre.masked_fill(~dead, -math.inf), n_aux, self.widest)
        return (residual - self.partial_decode(f_aux)).pow(2).sum(-1).mean()


def top_over_ranks(pre: torch.Tensor, k: int, widest: int) -> torch.Tensor:
    """ReLU of the k largest entries of the last dimension taken over all ranks' slices; the rest zero.

    `widest` is the largest slice's size. Each rank offers its own k largest (padded with -inf to
    a common count); the gathered candidates are ranked identically on every rank, and each keeps
    the winners that are its own.
    """
    per_rank = min(k, pre.shape[-1])
    values, index = pre.topk(per_rank, dim=-1)
    width = min(k, widest)
    offered = nn.functional.pad(values.detach(), (0, width - per_rank), value=-math.inf)
    candidates = all_gather(offered)  # [ranks, ..., width]
    ranked = candidates.movedim(0, -2).flatten(-2)  # [..., ranks * width], rank-major
    winners = torch.zeros_like(ranked, dtype=torch.bool).scatter_(-1, ranked.topk(k, dim=-1).indices, True)
    rank = world().rank
    mine = winners[..., rank * width : rank * width + per_rank]
    kept = torch.where(mine, torch.relu(values), torch.zeros_like(values))
    return torch.zeros_like(pre).scatter(-1, index, kept)


def gather_whole(coder: ShardedCoder) -> Coder | None:
    """The whole coder assembled in the main rank's host memory (None elsewhere), for saving and splicing."""
    world = coder.world
    local = coder.local.state_dict()
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in local}
    for src in range(world.size):
        start, stop = bounds(coder.n_features, world.size, src)
        for name, tensor in local.items():
            dim = coder.feature_dims[name]
            if dim is None:
                if src == 0:
                    pieces[name].append(tensor.detach().cpu())
                continue
            shape = list(tensor.shape)
            shape[dim] = stop - start
            mine = tensor.detach() if src == world.rank else tensor.new_empty(shape)
            pieces[name].append(broadcast(mine, src).cpu())
    if not world.main:
        return None
    config = dict(coder.config())
    kind, d_in, n_features = config.pop("kind"), config.pop("d_in"), config.pop("n_features")
    with torch.random.fork_rng():
        whole = coder_class(kind)(d_in, n_features, **config)
    dims = coder.feature_dims
    whole.load_state_dict(
        {name: parts[0] if dims[name] is None else torch.cat(parts, dims[name]) for name, parts in pieces.items()}
    )
    return whole.train(coder.training)
