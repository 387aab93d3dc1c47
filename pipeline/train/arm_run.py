"""One coder in training: what to train (`ArmSpec`), and its optimiser, schedules, checkpoints and tracker (`ArmRun`).

`trainer.train_grid` steps a grid's arms one by one or, stacked (`stack`), several at once.
"""

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.activations.arrays import Columns, coder_arrays, provenance, transcodes
from pipeline.activations.loading import ActivationData
from pipeline.atomic import write_json_atomic
from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.decoder import decoder_similarity
from pipeline.layout import METRICS
from pipeline.track.wandb_run import open_tracker
from pipeline.train import checkpoint
from pipeline.train.centre import fold_centre, input_centre
from pipeline.train.optimizer import adam, clipped_step
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
        self.spec, self.cfg = spec, spec.train
        self.n_steps = self.cfg.tokens // self.cfg.batch_size
        if self.n_steps < 1:
            raise ConfigError(f"train.tokens: {self.cfg.tokens} is less than one batch of {self.cfg.batch_size}")
        # Which of the data's arrays this arm reads and predicts (an SAE: one; a transcoder: two; a CLT: two per layer).
        self.arrays = coder_arrays(spec.coder.kind, self.cfg.hook or data.hook, self.cfg)
        self.centre = input_centre(self.cfg.center, self.arrays, data)
        self.columns = Columns(self.arrays, data.arrays, data.d, self.centre)
        torch.manual_seed(self.cfg.seed)
        self.parallel = parallel_for(self.cfg)  # train.parallel: how this arm's work splits over ranks
        self.coder = self.parallel.build(spec.coder, data.d, len(self.arrays.inputs), data.device)
        self.optimizer = adam(self.coder.parameters(), self.cfg.lr)
        self.firing = self.parallel.firing_tracker(self.coder, data.device)
        # The batch order is part of the configuration, so a resume never continues in another order;
        # stacking only changes how the steps are computed, so a run may resume stacked or not.
        train = {k: v for k, v in _plain(self.cfg).items() if k != "stack_arms"}
        self.config = {
            "coder": _plain(spec.coder), "train": train, "arrays": list(self.arrays.arrays),
            "scale": [data.scales[name] for name in self.arrays.arrays], "order": data.order,
        }  # fmt: skip
        resumed = (
            self.parallel.load_checkpoint(spec.run_dir, self.config, self.coder, self.optimizer, self.firing) or {}
        )
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
                    f"step {step}: the loss is {self.loss}; "
                    f"last good checkpoint: {self.last_good} in {self.spec.run_dir}"
                )
            if self.tracker:
                tokens = done * cfg.batch_size
                metrics = {f"train/{k}": v.item() for k, v in parts.items()}
                self.tracker.log(metrics | {"tokens": tokens, "flops": tokens * self.flops_per_token})

    def update(self, f, step: int) -> None:
        """After backward: the clipped optimiser step, firing history and the checkpoint when due."""
        clipped_step(self.optimizer, self.parallel.gradient_norm(self.coder), self.cfg.grad_clip)
        self.coder.after_step()
        self.firing.update(f)
        self.save_checkpoint_if_due(step)

    def save_checkpoint_if_due(self, step: int) -> None:
        if self._checkpoint_due(step):
            done = step + 1
            extra = {
                "wandb_id": self.tracker.id if self.tracker else "",
                "wall_time_s": time.monotonic() - self.started,
            }
            self.parallel.save_checkpoint(
                self.spec.run_dir, done, self.config, self.coder, self.optimizer, self.firing, extra
            )
            self.last_good = f"step {done}"

    def finish(self, data: ActivationData, splicer=None, scorer=None) -> dict:
        """Calibrates the coder's inference (`Coder.calibrate`) and evaluates it on the held-out rows (spliced into
        the model with a `Splicer`, its circuits scored with a `CircuitScorer` when it transcodes), writes the run
        folder; the checkpoint is then removed."""
        if self.centre is not None:  # from here on the coder acts on the uncentred inputs
            fold_centre(self.coder, self.centre)
        uncentred = Columns(self.arrays, data.arrays, data.d)
        self.coder.calibrate([uncentred(batch)[0] for batch in data.eval_batches(self.cfg.batch_size)])
        metrics = self.parallel.evaluate(self.coder.eval(), data.eval_batches(self.cfg.batch_size), uncentred)
        whole = self.parallel.whole(self.coder)  # the ordinary coder, on the main rank only: it writes the run folder
        if whole is not None:
            metrics |= decoder_similarity(whole)
        if splicer is not None and whole is not None:
            metrics |= splicer(whole.to(data.device), self.arrays, data.scales)
        if scorer is not None and whole is not None and transcodes(self.arrays):
            metrics |= scorer.score(whole.to(data.device), provenance(data.source, self.arrays, data.scales))
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
            whole.save(self.spec.run_dir / "coder", provenance(data.source, self.arrays, data.scales))
            write_json_atomic(self.spec.run_dir / METRICS, metrics)
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
