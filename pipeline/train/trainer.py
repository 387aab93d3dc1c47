"""Training coders on one hook's activations: a single run, or a fused grid of arms sharing each batch.

Every arm of a grid sees the batches it would see alone (the order is a pure function of the seed
and the step) and is initialised from its own seed, so each arm's result equals the arm trained
alone: to the bit, or for arms trained as one stack (`stack`) up to the rounding of batched
products. Reading the store and building each batch happens once for all of them.
"""

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.progress import Progress
from pipeline.store.activation_store import write_json_atomic
from pipeline.train import checkpoint
from pipeline.activations.arrays import Columns, coder_arrays
from pipeline.activations.loading import ActivationData
from pipeline.train.parallel import parallel_for


def autocast(device: torch.device, precision: str):
    """The matrix-product precision of training steps: bfloat16 (with float32 weights and sums) or float32."""
    bf16 = precision == "bfloat16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class ArmSpec:
    """One coder to train: its configs and where its run folder goes."""

    coder: CoderConfig
    train: TrainConfig
    run_dir: Path
    run_id: str
    group: str


def schedules(step: int, n_steps: int, cfg: TrainConfig) -> tuple[float, float]:
    """(learning-rate factor, sparsity factor): the penalty ramps in at the start, the rate decays at the end."""
    warmup = max(1, round(cfg.lambda_warmup_frac * n_steps))
    decay = max(1, round(cfg.lr_decay_frac * n_steps))
    return min(1.0, (n_steps - step) / decay), min(1.0, (step + 1) / warmup)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else asdict(cfg)


class ArmRun:
    """A coder in training: its optimiser, firing history, checkpoints and tracker."""

    def __init__(self, spec: ArmSpec, data: ActivationData, tracking: TrackingConfig):
        from pipeline.track.wandb_run import open_tracker

        self.spec, self.cfg = spec, spec.train
        self.n_steps = self.cfg.tokens // self.cfg.batch_size
        if self.n_steps < 1:
            raise ConfigError(f"train.tokens: {self.cfg.tokens} is less than one batch of {self.cfg.batch_size}")
        # Which of the data's arrays this arm reads and predicts (an SAE: one; a transcoder: two; a CLT: two per layer).
        self.arrays = coder_arrays(spec.coder.kind, self.cfg.hook or data.hook, self.cfg)
        self.columns = Columns(self.arrays, data.arrays, data.d)
        torch.manual_seed(self.cfg.seed)
        self.parallel = parallel_for(self.cfg)  # train.parallel: how this arm's work splits over ranks
        self.coder = self.parallel.build(spec.coder, data.d, len(self.arrays.inputs), data.device)
        # On CUDA the fused kernel updates every parameter in one launch.
        on_cuda = data.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.coder.parameters(), lr=self.cfg.lr, betas=(0.9, 0.999), fused=on_cuda)
        self.firing = self.parallel.firing_tracker(self.coder, data.device)
        # The batch order is part of the configuration, so a resume never continues in another order;
        # stacking only changes how the steps are computed, so a run may resume stacked or not.
        train = {k: v for k, v in _plain(self.cfg).items() if k != "stack_arms"}
        self.config = {
            "coder": _plain(spec.coder), "train": train, "arrays": list(self.arrays.arrays),
            "scale": [data.scales[name] for name in self.arrays.arrays], "order": data.order,
        }  # fmt: skip
        resumed = self.parallel.load_checkpoint(spec.run_dir, self.config, self.coder, self.optimizer, self.firing) or {}
        self.start_step = resumed.get("step", 0)
        self.last_good = f"step {self.start_step}" if self.start_step else "none"
        self.tracker = open_tracker(
            tracking, name=spec.run_id, group=spec.group, config=self.config, folder=spec.run_dir,
            job_type="train", resume_id=resumed.get("wandb_id", ""),
        ) if self.parallel.main else None  # fmt: skip
        self.started = time.monotonic() - resumed.get("wall_time_s", 0.0)
        self.flops_per_token = self.coder.flops_per_token()
        self.loss = float("nan")

    def step(self, batch: torch.Tensor, step: int) -> None:
        x, target = self.columns(batch)
        sparsity_factor = self.set_rate(step)
        with autocast(x.device, self.cfg.precision):
            parts, f = self.coder.loss(x, sparsity_factor, **target)
        self.record(parts, step)
        parts["loss"].backward()
        self.update(f, step)

    def set_rate(self, step: int) -> float:
        """Sets the learning rate of `step` and returns its sparsity factor."""
        lr_factor, sparsity_factor = schedules(step, self.n_steps, self.cfg)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.cfg.lr * lr_factor
        return sparsity_factor

    def _checkpoint_due(self, step: int) -> bool:
        done = step + 1
        return bool(self.cfg.checkpoint_every) and done % self.cfg.checkpoint_every == 0 and done < self.n_steps

    def record(self, parts: dict[str, torch.Tensor], step: int) -> None:
        """Logs the loss parts of `step` when due; raises TrainingDiverged on a non-finite loss."""
        cfg, done = self.cfg, step + 1
        # Reading the loss syncs with the device, so it is read only to log it or to vouch for a checkpoint.
        if step % cfg.log_every == 0 or done == self.n_steps or self._checkpoint_due(step):
            self.loss = parts["loss"].item()
            if not math.isfinite(self.loss):
                raise TrainingDiverged(
                    f"step {step}: the loss is {self.loss}; last good checkpoint: {self.last_good} in {self.spec.run_dir}"
                )
            if self.tracker:
                tokens = done * cfg.batch_size
                metrics = {f"train/{k}": v.item() for k, v in parts.items()}
                self.tracker.log(metrics | {"tokens": tokens, "flops": tokens * self.flops_per_token})

    def update(self, f, step: int) -> None:
        """After backward: clipping, the optimiser step, firing history and the checkpoint when due."""
        self.parallel.clip_gradients(self.coder, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.coder.after_step()
        self.firing.update(f)
        self.save_checkpoint_if_due(step)

    def save_checkpoint_if_due(self, step: int) -> None:
        if self._checkpoint_due(step):
            done = step + 1
            extra = {"wandb_id": self.tracker.id if self.tracker else "", "wall_time_s": time.monotonic() - self.started}
            self.parallel.save_checkpoint(self.spec.run_dir, done, self.config, self.coder, self.optimizer, self.firing, extra)
            self.last_good = f"step {done}"

    def finish(self, data: ActivationData, splicer=None) -> dict:
        """Evaluates on the held-out rows and writes the run folder; the checkpoint is then removed."""
        metrics = self.parallel.evaluate(self.coder.eval(), data.eval_batches(self.cfg.batch_size), self.columns)
        whole = self.parallel.whole(self.coder)  # the ordinary coder, on the main rank only: it writes the run folder
        if splicer is not None and whole is not None:
            metrics |= splicer(whole.to(data.device), self.arrays, data.scales)
        dead, window = self.firing.dead_fraction(self.cfg.dead_window_tokens)
        if "layers" in metrics:  # a CLT: its dead features per layer too
            per_layer = self.firing.dead_fractions(self.cfg.dead_window_tokens, len(metrics["layers"]))
            for layer, layer_dead in zip(metrics["layers"], per_layer):
                layer["dead_fraction"] = layer_dead
        tokens = self.n_steps * self.cfg.batch_size
        metrics |= {
            "dead_fraction": dead,
            "dead_window_tokens": window,
            "tokens": tokens,
            "steps": self.n_steps,
            "flops": tokens * self.flops_per_token,
            "flops_per_token": self.flops_per_token,
            "wall_time_s": time.monotonic() - self.started,
            "resumed_from_step": self.start_step,
            "wandb_run_id": self.tracker.id if self.tracker else "",
        }
        if whole is not None:
            whole.save(self.spec.run_dir / "coder")
            write_json_atomic(self.spec.run_dir / "metrics.json", metrics)
            checkpoint.remove(self.spec.run_dir)
        if self.tracker:
            self.tracker.summary({k: v for k, v in metrics.items() if not isinstance(v, dict)})
            self.tracker.finish()
        return metrics

    def abandon(self) -> None:
        """Ends a failed run: its tracker is closed and its coder and optimiser state released."""
        if self.tracker:
            self.tracker.finish(failed=True)
        self.coder = self.optimizer = None


def train_grid(specs: list[ArmSpec], data: ActivationData, tracking: TrackingConfig, splicer=None) -> list[dict | Exception]:
    """Trains every arm on one pass over the data; each arm's metrics, or the exception that stopped it.

    Arms must share the batch size and the seed, which fix the batches they see. Arms of one shape
    that differ only in rate or penalty train as one stack (`stack`, `train.stack_arms`). With a
    `Splicer`, each arm's metrics also hold the spliced next-token loss change and KL.
    """
    from pipeline.train.stack import build_stacks  # here, not at the top: stacks are built of ArmRuns

    if len({(s.train.batch_size, s.train.seed) for s in specs}) != 1:
        raise ValueError("a fused grid needs one batch size and one seed for all its arms")
    outcomes: list[dict | Exception | None] = [None] * len(specs)
    stacks = build_stacks(_start_arms(specs, data, tracking, outcomes))
    if stacks:
        cfg = specs[0].train
        first, last = min(s.start_step for s in stacks), max(s.n_steps for s in stacks)
        label = specs[0].run_id if len(specs) == 1 else f"grid of {len(specs)} arms"
        progress = Progress(f"train {label}", last - first, "steps", every_s=5.0)
        for step, x in enumerate(data.batches(cfg.batch_size, last, cfg.seed, first), start=first):
            for stack in stacks:
                if stack.active(step):
                    for i, err in stack.step(x, step).items():  # arms that failed: they stop, the rest go on
                        outcomes[i] = err
                    if step + 1 == stack.n_steps:
                        for i, arm in stack.arms.items():
                            outcomes[i] = _finish(arm, data, splicer)
                        stack.arms.clear()
            stacks = [stack for stack in stacks if stack.arms]
            if not stacks:  # every arm has finished or failed: the rest of the data is not needed
                break
            progress.extra = "  ".join(f"loss {a.loss:.4g}" for a in [a for s in stacks for a in s.arms.values()][:4])
            progress.update(1)
        for stack in stacks:  # arms resumed at or past their last step
            for i, arm in stack.arms.items():
                outcomes[i] = _finish(arm, data, splicer)
    return outcomes


def _start_arms(specs: list[ArmSpec], data: ActivationData, tracking: TrackingConfig, outcomes: list) -> dict[int, ArmRun]:
    """Each spec's run by grid position; a spec that cannot start gets its exception in `outcomes` instead."""
    arms = {}
    for i, spec in enumerate(specs):
        try:
            arms[i] = ArmRun(spec, data, tracking)
        except Exception as err:  # noqa: BLE001 - one bad arm must not stop the grid
            outcomes[i] = err
    return arms


def _finish(arm: ArmRun, data: ActivationData, splicer) -> dict | Exception:
    try:
        return arm.finish(data, splicer)
    except Exception as err:  # noqa: BLE001 - one arm's failure must not stop the grid
        arm.abandon()
        return err


def train_run(
    coder_cfg: CoderConfig,
    cfg: TrainConfig,
    data: ActivationData,
    run_dir: Path,
    tracking: TrackingConfig,
    run_id: str,
    group: str,
    splicer=None,
) -> dict:
    """Trains one coder (resuming from `run_dir`'s checkpoint if there is one); raises what stops it."""
    [outcome] = train_grid([ArmSpec(coder_cfg, cfg, run_dir, run_id, group)], data, tracking, splicer)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
