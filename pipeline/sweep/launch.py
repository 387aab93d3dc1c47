"""Where arms run: in this process one after another, or as Ray tasks packed onto a cluster's CPUs and GPUs."""

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.progress import Progress
from pipeline.sweep.arm import run_arms
from pipeline.sweep.plan import Arm

LAUNCHERS = ("local", "ray")


def check_launcher(name: str) -> None:
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher.name: expected one of {', '.join(LAUNCHERS)}, got {name!r}")


def packs(arms: list[Arm], pack: int) -> list[list[Arm]]:
    """Arms that see the same batches (one batch size and seed), in groups of at most `pack`."""
    if pack < 1:
        raise ConfigError(f"launcher.pack: expected at least 1 arm per process, got {pack}")
    by_data: dict[tuple, list[Arm]] = {}
    for arm in arms:
        by_data.setdefault((arm.batch_size, arm.seed), []).append(arm)
    return [group[i : i + pack] for group in by_data.values() for i in range(0, len(group), pack)]


def launch(cfg: PipelineConfig, arms: list[Arm], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    check_launcher(cfg.launcher.name)
    groups = packs(arms, cfg.launcher.pack)
    if cfg.launcher.name == "ray":
        return _launch_ray(cfg, groups, hook, sweep_dir, group)
    progress = Progress("sweep", len(arms), "arms", every_s=0.0)
    rows = []
    for pack in groups:
        rows.extend(run_arms(cfg, pack, hook, sweep_dir, group))
        progress.update(len(pack), extra=f"last: {pack[-1].run_id} {rows[-1]['status']}")
    return rows


def _launch_ray(cfg: PipelineConfig, groups: list[list[Arm]], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    import ray

    from pipeline.cluster import connect

    connect(cfg.ray)
    task = ray.remote(num_cpus=cfg.launcher.cpus_per_arm, num_gpus=cfg.launcher.gpus_per_arm, max_retries=0)(run_arms)
    pending = {task.remote(cfg, pack, hook, sweep_dir, group): pack for pack in groups}
    progress = Progress("sweep", sum(len(p) for p in groups), "arms", every_s=0.0)
    rows = []
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        pack = pending.pop(ref)
        rows.extend(ray.get(ref))
        progress.update(len(pack), extra=f"last: {pack[-1].run_id} {rows[-1]['status']}")
    return rows
