"""Weights & Biases tracking. wandb is imported only when tracking is on; without an API key it runs offline."""

import os
from pathlib import Path

from pipeline.config import TrackingConfig


def resolve_mode(cfg: TrackingConfig) -> str:
    if cfg.mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return cfg.mode


class Tracker:
    """One W&B run; metrics are logged against tokens and FLOPs as well as steps."""

    def __init__(
        self, cfg: TrackingConfig, name: str, group: str, config: dict, folder: Path, job_type: str, resume_id: str = ""
    ):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            name=name,
            group=group,
            job_type=job_type,
            config=config,
            dir=str(folder),
            mode=resolve_mode(cfg),
            reinit="create_new",
            id=resume_id or None,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(silent=True),
        )
        self.run.define_metric("tokens")
        self.run.define_metric("flops")
        self.run.define_metric("train/*", step_metric="tokens")

    @property
    def id(self) -> str:
        return self.run.id

    def log(self, metrics: dict) -> None:
        self.run.log(metrics)

    def summary(self, metrics: dict) -> None:
        self.run.summary.update(metrics)

    def log_table(self, key: str, frame) -> None:
        import wandb

        self.run.log({key: wandb.Table(dataframe=frame)})

    def log_images(self, paths: list[Path]) -> None:
        import wandb

        self.run.log({p.stem: wandb.Image(str(p)) for p in paths})

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_tracker(cfg: TrackingConfig, **kwargs) -> Tracker | None:
    """A tracker, or None when tracking is disabled (and wandb is then never imported)."""
    return None if resolve_mode(cfg) == "disabled" else Tracker(cfg, **kwargs)
