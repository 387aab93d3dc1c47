"""Training one run, or one pack of a sweep's arms, on several Ray Train workers (one per GPU).

Ray Train's TorchTrainer starts the workers, sets up their torch process group and runs a
function on each. The function is the code a single process or torchrun runs (the train stage,
or the sweep's `run_arms`), so `train.parallel` means the same under every launcher. The driver
gets back what rank 0 returned.
"""

from dataclasses import replace
from pathlib import Path

from pipeline.config import LauncherConfig, PipelineConfig


def needs_workers(launcher: LauncherConfig) -> bool:
    """Whether `launcher` gives each arm (or pack of arms) more than one GPU, so it trains on several workers."""
    return launcher.name == "ray" and launcher.gpus_per_arm > 1


def worker_count(cfg: PipelineConfig) -> int:
    """The workers of one arm: one per GPU of `launcher.gpus_per_arm` (whole GPUs: the config checks it)."""
    return int(cfg.launcher.gpus_per_arm)


def run_on_workers(fn, args: tuple, cfg: PipelineConfig, name: str, num_workers: int, use_gpu: bool):
    """`fn(*args)` on every one of `num_workers` workers in one process group; what rank 0 returns."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.distributed.cluster import connect

    connect(cfg.ray)
    trainer = TorchTrainer(
        _call,
        train_loop_config={"fn": fn, "args": args},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        # Ray Train's own records of the run; the run's results go to its run folder as usual.
        run_config=RunConfig(name=name, storage_path=str(Path(cfg.out_dir).resolve() / "ray_train")),
    )
    return trainer.fit().return_value


def _call(config: dict):
    return config["fn"](*config["args"])


def _on_worker(cfg: PipelineConfig) -> PipelineConfig:
    # On a worker the run trains in place; launching it again from there would nest trainers.
    return replace(cfg, launcher=replace(cfg.launcher, name="local"))


def train_on_workers(cfg: PipelineConfig, num_workers: int | None = None, use_gpu: bool = True) -> None:
    """The train stage on `num_workers` workers (default: `launcher.gpus_per_arm` GPUs, one worker each)."""
    from pipeline.stages import train

    count = worker_count(cfg) if num_workers is None else num_workers
    run_on_workers(train, (_on_worker(cfg),), cfg, f"train-{cfg.coder.kind}-N{cfg.coder.n_features}", count, use_gpu)


def run_pack_on_workers(cfg: PipelineConfig, arms: list, hook: str, sweep_dir: Path, group: str,
                        num_workers: int | None = None, use_gpu: bool = True) -> list[dict]:  # fmt: skip
    """A pack of a sweep's arms trained on several workers, as `sweep.arm.run_arms` trains it in one process.

    Rank 0 runs `run_arms`, which writes each arm's row and run folder; the other ranks train the
    same arms beside it and write nothing. Returns rank 0's rows.
    """
    count = worker_count(cfg) if num_workers is None else num_workers
    return run_on_workers(
        _pack_rank, (_on_worker(cfg), arms, hook, sweep_dir, group), cfg, f"pack-{arms[0].run_id}", count, use_gpu
    )


def _pack_rank(cfg: PipelineConfig, arms: list, hook: str, sweep_dir: Path, group: str) -> list[dict] | None:
    from pipeline.models.loading import pick_device
    from pipeline.sweep.arm import activation_data, arm_configs, run_arms
    from pipeline.sweep.results import run_dir
    from pipeline.distributed.process_group import process_group
    from pipeline.train.trainer import ArmSpec, train_grid

    with process_group(pick_device(cfg.train.device)) as world:
        if world.main:
            return run_arms(cfg, arms, hook, sweep_dir, group)
        specs = [ArmSpec(*arm_configs(cfg, arm), run_dir(sweep_dir, arm.run_id), arm.run_id, group) for arm in arms]
        data, _ = activation_data(Path(cfg.out_dir) / "store.zarr", hook, specs[0].train)
        train_grid(specs, data, cfg.tracking)
        return None
