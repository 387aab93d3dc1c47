"""A coder whose features are split over ranks: rank r holds features [start, stop) of every per-feature tensor.

Each rank keeps the rows of `w_enc`, the entries of `b_enc` (and of any other per-feature tensor,
such as jumprelu's thresholds or topk's firing counters) and the columns of `w_dec` of its slice;
`b_dec` is replicated. Every rank sees the whole batch, encodes it with its own features, decodes
a partial reconstruction and the partials are summed over ranks, so the loss is the whole coder's
loss and is the same on every rank. Penalties are sums over features, so each rank sums its own
and those are summed too. TopK picks the k largest pre-activations of a row over all ranks: each
rank offers its own k largest as candidates and every rank ranks the gathered candidates.

A kind with `feature_sharding` writes its sharded forward (`Coder.sharded_loss`) from its formula,
since its own `loss` sees only its own features; `RankCollectives` gives it the sums and selections
over ranks it needs.
"""

import math

import torch
from torch import nn

from pipeline.coders.base import Coder
from pipeline.coders.registry import KINDS, rebuild
from pipeline.distributed.process_group import (
    World,
    all_gather,
    all_reduce_,
    broadcast,
    shared_input,
    sum_over_ranks,
    world,
)
from pipeline.errors import ConfigError


def bounds(n_features: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s features; slices differ in size by at most one feature."""
    return rank * n_features // world_size, (rank + 1) * n_features // world_size


def feature_dims(coder: Coder) -> dict[str, int | None]:
    """Which dimension of each state tensor runs over the features; None for tensors every feature shares.

    Found by building the kind at two tiny widths (without weights) and seeing which dimensions change,
    so a tensor a coder adds later is sliced correctly without being listed anywhere.
    """
    with torch.device("meta"):
        narrow, wide = (type(coder)(1, n, **coder.hparams).state_dict() for n in (2, 3))
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


class RankCollectives:
    """The `FeatureShard` collectives of this process group, for a coder's sharded forward."""

    def __init__(self, widest: int):
        self.widest = widest

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(tensor)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return shared_input(x)

    def top(self, values: torch.Tensor, k: int, widest: int) -> torch.Tensor:
        return top_over_ranks(values, k, widest)

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return all_reduce_(tensor, op)


def check_shardable(kind: str) -> None:
    """ConfigError unless a `kind` coder can be split over ranks by its features."""
    if not KINDS[kind].feature_sharding:
        kinds = ", ".join(name for name, cls in KINDS.items() if cls.feature_sharding)
        raise ConfigError(f"train.parallel: features sharding supports coder.kind {kinds}, not {kind!r}")


class ShardedCoder(nn.Module):
    """This rank's slice of a coder of `n_features` features, trained as if it were the whole coder."""

    def __init__(self, whole: Coder, world: World):
        super().__init__()
        check_shardable(whole.kind)
        if whole.n_features < world.size:
            raise ConfigError(f"coder.n_features: {whole.n_features} features cannot be split over {world.size} ranks")
        self.kind, self.d_in, self.n_features, self.world = whole.kind, whole.d_in, whole.n_features, world
        self.start, self.stop = bounds(whole.n_features, world.size, world.rank)
        self.widest = -(-whole.n_features // world.size)  # features in the largest slice
        self.collectives = RankCollectives(self.widest)
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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.local.sharded_encode(x, self.collectives)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.local.sharded_decode(f, self.collectives)

    def calibrate(self, inputs: list[torch.Tensor]) -> None:
        self.local.sharded_calibrate(inputs, self.collectives)

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The whole coder's loss parts (equal on every rank) and this rank's feature activations."""
        return self.local.sharded_loss(x, sparsity_scale, self.collectives)


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
    with torch.random.fork_rng():
        whole = rebuild(coder.config())
    dims = coder.feature_dims
    whole.load_state_dict(
        {name: parts[0] if dims[name] is None else torch.cat(parts, dims[name]) for name, parts in pieces.items()}
    )
    return whole.train(coder.training)
