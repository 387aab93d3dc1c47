"""Training one coder on one hook's activations, from a config to a run folder with weights and metrics.json."""

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.coders.registry import build
from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.progress import Progress
from pipeline.store.activation_store import write_json_atomic
from pipeline.train import checkpoint
from pipeline.train.data import ActivationData
from pipeline.train.metrics import FiringTracker, evaluate


class TrainingDiverged(RuntimeError):
    pass


def schedules(step: int, n_steps: int, cfg: TrainConfig) -> tuple[float, float]:
    """(learning-rate factor, sparsity factor): the penalty ramps in at the start, the rate decays at the end."""
    warmup = max(1, round(cfg.lambda_warmup_frac * n_steps))
    decay = max(1, round(cfg.lr_decay_frac * n_steps))
    return min(1.0, (n_steps - step) / decay), min(1.0, (step + 1) / warmup)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else asdict(cfg)


def train_run(
    coder_cfg: CoderConfig,
    cfg: TrainConfig,
    data: ActivationData,
    run_dir: Path,
    tracking: TrackingConfig,
    run_id: str,
    group: str,
) -> dict:
    """Trains (resuming from `run_dir`'s checkpoint if there is one), evaluates on the held-out rows,
    saves `run_dir/coder/` and `run_dir/metrics.json`."""
    from pipeline.track.wandb_run import open_tracker

    n_steps = cfg.tokens // cfg.batch_size
    if n_steps < 1:
        raise ConfigError(f"train.tokens: {cfg.tokens} is less than one batch of {cfg.batch_size}")
    device = data.train.device
    torch.manual_seed(cfg.seed)
    coder = build(coder_cfg, data.d).to(device).train()
    optimizer = torch.optim.Adam(coder.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    firing = FiringTracker(coder.n_features, device)
    config = {"coder": _plain(coder_cfg), "train": _plain(cfg), "hook": data.hook, "scale": data.scale}
    resumed = checkpoint.load(run_dir, config, coder, optimizer, firing) or {}
    start_step = resumed.get("step", 0)
    tracker = open_tracker(
        tracking, name=run_id, group=group, config=config, folder=run_dir, job_type="train", resume_id=resumed.get("wandb_id", "")
    )
    start = time.monotonic() - resumed.get("wall_time_s", 0.0)
    try:
        _train_steps(coder, optimizer, firing, data, cfg, n_steps, start_step, tracker, run_id, run_dir, config, start)
        metrics = evaluate(coder.eval(), data.eval_batches(cfg.batch_size))
        dead, window = firing.dead_fraction(cfg.dead_window_tokens)
        metrics |= {
            "dead_fraction": dead,
            "dead_window_tokens": window,
            "tokens": n_steps * cfg.batch_size,
            "steps": n_steps,
            "flops": n_steps * cfg.batch_size * coder.flops_per_token(),
            "flops_per_token": coder.flops_per_token(),
            "wall_time_s": time.monotonic() - start,
            "resumed_from_step": start_step,
            "wandb_run_id": tracker.id if tracker else "",
        }
        coder.save(run_dir / "coder")
        write_json_atomic(run_dir / "metrics.json", metrics)
        checkpoint.remove(run_dir)  # the finished weights and metrics replace it
        if tracker:
            tracker.summary({k: v for k, v in metrics.items() if not isinstance(v, dict)})
            tracker.finish()
        return metrics
    except BaseException:
        if tracker:
            tracker.finish(failed=True)
        raise


def _train_steps(coder, optimizer, firing, data, cfg, n_steps, start_step, tracker, run_id, run_dir, config, start) -> None:
    flops_per_token = coder.flops_per_token()
    progress = Progress(f"train {run_id}", n_steps, "steps", every_s=5.0)
    progress.done = start_step
    last_good = "none" if start_step == 0 else f"step {start_step}"
    for step, x in enumerate(data.batches(cfg.batch_size, n_steps, cfg.seed, start_step), start=start_step):
        lr_factor, sparsity_factor = schedules(step, n_steps, cfg)
        for param_group in optimizer.param_groups:
            param_group["lr"] = cfg.lr * lr_factor
        parts, f = coder.loss(x, sparsity_factor)
        done = step + 1
        checkpoint_due = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < n_steps
        # Reading the loss syncs with the device, so it is read only to log it or to vouch for a checkpoint.
        loss = parts["loss"].item() if step % cfg.log_every == 0 or done == n_steps or checkpoint_due else None
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"step {step}: the loss is {loss}; last good checkpoint: {last_good} in {run_dir}")
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        coder.after_step()
        firing.update(f.detach())
        if loss is not None:
            tokens = (step + 1) * cfg.batch_size
            if tracker:
                tracker.log({f"train/{k}": v.item() for k, v in parts.items()} | {"tokens": tokens, "flops": tokens * flops_per_token})
            progress.extra = f"loss {loss:.4g}"
        if checkpoint_due:
            extra = {"wandb_id": tracker.id if tracker else "", "wall_time_s": time.monotonic() - start}
            checkpoint.save(run_dir, done, config, coder, optimizer, firing, extra)
            last_good = f"step {done}"
        progress.update(1)
