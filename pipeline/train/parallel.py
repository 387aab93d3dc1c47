"""How a run splits its work over ranks (`train.parallel`): not at all, by rows (ddp) or by features.

The trainer gets its coder, firing tracker, gradients' global norm, evaluation, checkpoints and the
finished whole coder from a `Parallel`. `none` is the single-process behaviour; `ddp` and
`features` train the same coder as one process does, up to float rounding:

- ddp: every rank holds the whole coder and takes its share of each batch's rows; gradients are
  averaged over ranks, so a step is the step one process takes on the whole batch. The batch size
  must divide by the number of ranks.
- features: every rank holds a slice of the features (`sharded.ShardedCoder`) and sees every row;
  gradients are already whole, and clipping uses the norm over all slices.
"""

import torch

from pipeline.coders.base import fired_in_batch
from pipeline.coders.registry import build, coder_class
from pipeline.config import CoderConfig, TrainConfig
from pipeline.distributed.process_group import World, all_gather, all_reduce_, world
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import FiringTracker, density_metrics, evaluate
from pipeline.train import checkpoint
from pipeline.train.optimizer import gradient_norm
from pipeline.train.sharded import ShardedCoder, bounds, check_shardable, gather_whole


def parallel_for(cfg: TrainConfig) -> "Parallel":
    """The strategy `train.parallel` names, on the process group this process is in (if any)."""
    current = world()
    if cfg.parallel == "none" and current.size > 1:
        raise ConfigError(f"train.parallel: none, but {current.size} processes were launched; use ddp or features")
    return {"none": Parallel, "ddp": DataParallel, "features": FeatureParallel}[cfg.parallel](current, cfg)


def check_kind(kind: str, parallel: str) -> None:
    """ConfigError unless `train.parallel` can train a `kind` coder; stages call it before any work."""
    if parallel == "ddp" and not coder_class(kind).rows_independent:
        raise ConfigError(
            f"train.parallel: ddp cannot train {kind} (a row's loss depends on the other rows); use features"
        )
    if parallel == "features":
        check_shardable(kind)


class Parallel:
    """One process holds the whole coder and sees every row."""

    def __init__(self, world: World, cfg: TrainConfig):
        self.world, self.cfg = world, cfg

    @property
    def main(self) -> bool:
        return self.world.main

    def build(self, cfg: CoderConfig, d_in: int, n_layers: int, device: torch.device) -> torch.nn.Module:
        return build(cfg, d_in, n_layers).to(device).train()

    def firing_tracker(self, coder, device: torch.device) -> FiringTracker:
        return FiringTracker(coder.n_features, device)

    def gradient_norm(self, coder) -> torch.Tensor:
        """After backward: makes the gradients those of the whole batch and coder, and returns their global norm."""
        return gradient_norm(coder.parameters())

    def evaluate(self, coder, batches, split) -> dict:
        return evaluate(coder, batches, split=split)

    def whole(self, coder):
        """The finished coder as one ordinary coder on the main rank; None on the others."""
        return coder

    def save_checkpoint(self, folder, step: int, config: dict, coder, optimizer, firing, extra: dict) -> None:
        checkpoint.save(folder, step, config, coder, optimizer, firing, extra)

    def load_checkpoint(self, folder, config: dict, coder, optimizer, firing) -> dict | None:
        return checkpoint.load(folder, config, coder, optimizer, firing)


class ReplicatedCoder(torch.nn.Module):
    """The whole coder on every rank; a training step computes it on this rank's share of the rows."""

    def __init__(self, coder, world: World):
        super().__init__()
        self.local, self.world = coder, world
        self.kind, self.d_in, self.n_features = coder.kind, coder.d_in, coder.n_features

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0, **target: torch.Tensor):
        if not (self.training and torch.is_grad_enabled()):
            return self.local.loss(x, sparsity_scale, **target)  # evaluation: every rank scores every row
        rows = x.shape[0] // self.world.size
        mine = slice(self.world.rank * rows, (self.world.rank + 1) * rows)
        parts, f = self.local.loss(x[mine], sparsity_scale, **{name: t[mine] for name, t in target.items()})
        self._merge_firing_counts(rows)
        return _whole_batch_values(parts, self.world.size), f

    def _merge_firing_counts(self, rows: int) -> None:
        """TopK's tokens-since-fired counters as one process counts them over the whole batch.

        Each rank added its own rows to every counter and reset those its rows fired; a counter is
        reset if any rank reset it (the minimum is 0), and otherwise has seen every rank's rows.
        """
        counts = getattr(self.local, "tokens_since_fired", None)
        if counts is None:
            return
        merged = all_reduce_(counts.clone(), "min")
        counts.copy_(torch.where(merged == 0, merged, merged + rows * (self.world.size - 1)))
        self.local.add_idle_tokens(rows * (self.world.size - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.local.encode(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.local.decode(f)

    def after_step(self) -> None:
        self.local.after_step()

    def calibrate(self, inputs: list[torch.Tensor]) -> None:
        self.local.calibrate(inputs)  # every rank sees every held-out row, so every rank sets the same

    def flops_per_token(self) -> float:
        return self.local.flops_per_token()


def _whole_batch_values(parts: dict, size: int) -> dict:
    """Each part with the value of the whole batch (the mean over ranks) and this rank's gradient.

    Logging and the divergence check then read the same number on every rank, so all ranks stop
    at the same step; the gradients are averaged after backward.
    """
    local = torch.stack([p.detach() for p in parts.values()])
    mean = all_reduce_(local.clone()) / size
    return {name: p + (m - p.detach()) for (name, p), m in zip(parts.items(), mean)}


class RowShardedFiring(FiringTracker):
    """Firing over the whole batch when each rank saw only its share of the rows."""

    def __init__(self, n_features: int, device: torch.device, world_size: int):
        super().__init__(n_features, device)
        self.world_size = world_size

    def update(self, f) -> None:
        fired = all_reduce_(fired_in_batch(f).to(torch.uint8), "max").bool()
        self.tokens += f.shape[0] * self.world_size
        self.last_fired[fired] = self.tokens


class DataParallel(Parallel):
    def build(self, cfg: CoderConfig, d_in: int, n_layers: int, device: torch.device) -> ReplicatedCoder:
        check_kind(cfg.kind, "ddp")
        if self.cfg.batch_size % self.world.size:
            raise ConfigError(
                f"train.batch_size: {self.cfg.batch_size} rows do not split evenly over {self.world.size} ranks"
            )
        # Every rank draws the same initial coder from the run's seed.
        return ReplicatedCoder(super().build(cfg, d_in, n_layers, device), self.world)

    def firing_tracker(self, coder, device: torch.device) -> FiringTracker:
        return RowShardedFiring(coder.n_features, device, self.world.size)

    def gradient_norm(self, coder) -> torch.Tensor:
        for p in coder.parameters():
            if p.grad is not None:
                all_reduce_(p.grad).div_(self.world.size)
        return super().gradient_norm(coder)

    def whole(self, coder):
        return coder.local if self.main else None

    def save_checkpoint(self, folder, step, config, coder, optimizer, firing, extra) -> None:
        if self.main:  # every rank holds the same state
            checkpoint.save(folder, step, config, coder.local, optimizer, firing, extra)

    def load_checkpoint(self, folder, config, coder, optimizer, firing) -> dict | None:
        return checkpoint.load(folder, config, coder.local, optimizer, firing)


class FeatureShardedFiring(FiringTracker):
    """Firing of this rank's features; the dead fraction counts every rank's."""

    def __init__(self, n_local: int, n_features: int, device: torch.device):
        super().__init__(n_local, device)
        self.n_features = n_features

    def dead_fraction(self, window: int) -> tuple[float, int]:
        fraction, used = super().dead_fraction(window)
        dead = torch.tensor(round(fraction * len(self.last_fired)), device=self.last_fired.device)
        return int(all_reduce_(dead)) / self.n_features, used


class FeatureParallel(Parallel):
    def build(self, cfg: CoderConfig, d_in: int, n_layers: int, device: torch.device) -> ShardedCoder:
        # The whole dictionary is drawn in host memory from the run's seed, exactly as one process
        # draws it, and each rank keeps its slice: a sharded run starts where one process starts.
        return ShardedCoder(build(cfg, d_in, n_layers), self.world).to(device).train()

    def firing_tracker(self, coder: ShardedCoder, device: torch.device) -> FiringTracker:
        return FeatureShardedFiring(coder.local.n_features, coder.n_features, device)

    def gradient_norm(self, coder: ShardedCoder) -> torch.Tensor:
        # Sliced tensors contribute each rank's share of the squared norm; replicated ones count once.
        params = dict(coder.local.named_parameters())
        sliced = [p for name, p in params.items() if coder.feature_dims[name] is not None]
        shared = [p for name, p in params.items() if coder.feature_dims[name] is None]
        return (all_reduce_(gradient_norm(sliced).pow(2)) + gradient_norm(shared).pow(2)).sqrt()

    def evaluate(self, coder: ShardedCoder, batches, split) -> dict:
        """The held-out metrics of the whole coder: `decode` sums the slices; density needs every slice's counts."""
        batches = [split(batch)[0] for batch in batches]  # a sharded coder is an SAE: its input is its target
        metrics = evaluate(coder, batches)
        density = _feature_density(coder, batches)
        return metrics | density_metrics(density)

    def whole(self, coder: ShardedCoder):
        return gather_whole(coder)

    def save_checkpoint(self, folder, step, config, coder, optimizer, firing, extra) -> None:
        checkpoint.save_sharded(folder, step, config, coder, optimizer, firing, extra)

    def load_checkpoint(self, folder, config, coder, optimizer, firing) -> dict | None:
        return checkpoint.load_sharded(folder, config, coder, optimizer, firing)


@torch.no_grad()
def _feature_density(coder: ShardedCoder, batches: list[torch.Tensor]) -> torch.Tensor:
    """[n_features] float64: the share of rows each feature of the whole coder fires on."""
    counts = torch.zeros(coder.widest, dtype=torch.long, device=coder.local.w_dec.device)
    for x in batches:
        _, f = coder.loss(x)
        counts[: f.shape[-1]] += (f > 0).sum(0)
    gathered = all_gather(counts)  # every rank's counts, padded to the largest slice
    sizes = [
        stop - start for start, stop in (bounds(coder.n_features, coder.world.size, r) for r in range(coder.world.size))
    ]
    whole = torch.cat([gathered[r, :size] for r, size in enumerate(sizes)])
    return whole.double().cpu() / sum(len(x) for x in batches)
