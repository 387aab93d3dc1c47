"""Where arms run: in this process one after another, or as Ray tasks packed onto a cluster's CPUs and GPUs."""

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.progress import Progress
from pipeline.sweep.arm import run_arm
from pipeline.sweep.plan import Arm

LAUNCHERS = ("local", "ray")


def check_launcher(name: str) -> None:
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher.name: expected one of {', '.join(LAUNCHERS)}, got {name!r}")


def launch(cfg: PipelineConfig, arms: list[Arm], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    check_launcher(cfg.launcher.name)
    if cfg.launcher.name == "ray":
        return _launch_ray(cfg, arms, hook, sweep_dir, group)
    progress = Progress("sweep", len(arms), "arms", every_s=0.0)
    rows = []
    for arm in arms:
        rows.append(run_arm(cfg, arm, hook, sweep_dir, group))
        progress.update(1, extra=f"last: {arm.run_id} {rows[-1]['status']}")
    return rows


def _launch_ray(cfg: PipelineConfig, arms: list[Arm], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    import ray

    from pipeline.cluster import connect

    connect(cfg.ray)
    task = ray.remote(num_cpus=cfg.launcher.cpus_per_arm, num_gpus=cfg.launcher.gpus_per_arm, max_retries=0)(run_arm)
    pending = {task.remote(cfg, arm, hook, sweep_dir, group): arm for arm in arms}
    progress = Progress("sweep", len(arms), "arms", every_s=0.0)
    rows = []
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        arm = pending.pop(ref)
        rows.append(ray.get(ref))
        progress.update(1, extra=f"last: {arm.run_id} {rows[-1]['status']}")
    return rows
