"""Running a function on several Ray Train workers (one per GPU), one rank each of one torch process group.

Ray Train's TorchTrainer starts the workers, sets up their process group and calls the function on
each, as torchrun would start the same function's processes; the caller passes the body it runs in
a single process, so `train.parallel` means the same under every launcher. The driver gets back
what rank 0 returned.
"""

from pathlib import Path

from pipeline.config import LauncherConfig, PipelineConfig, RayConfig
from pipeline.distributed.cluster import connect
from pipeline.layout import OutDir


def needs_workers(launcher: LauncherConfig) -> bool:
    """Whether `launcher` gives each arm (or pack of arms) more than one GPU, so it trains on several workers."""
    return launcher.name == "ray" and launcher.gpus_per_arm > 1


def worker_count(cfg: PipelineConfig) -> int:
    """The workers of one arm: one per GPU of `launcher.gpus_per_arm` (whole GPUs: the config checks it)."""
    return int(cfg.launcher.gpus_per_arm)


def run_on_ranks(fn, args: tuple, *, num_workers: int, use_gpu: bool, ray: RayConfig, out_dir: Path | str, name: str):
    """`fn(*args)` on each of `num_workers` Ray Train workers, in one process group; what rank 0 returns.

    `name` names the run in Ray Train's own records, kept in `<out_dir>/ray_train`; results go to run folders.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(ray)
    trainer = TorchTrainer(
        _call,
        train_loop_config={"fn": fn, "args": args},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=str(OutDir(out_dir).ray_train.resolve())),
    )
    return trainer.fit().return_value


def run_as_launched(fn, args: tuple, cfg: PipelineConfig, name: str):
    """`fn(*args)` here, or on a Ray Train worker per GPU when the launcher gives the run several; rank 0's result."""
    if not needs_workers(cfg.launcher):
        return fn(*args)
    return run_on_ranks(
        fn, args, num_workers=worker_count(cfg), use_gpu=True, ray=cfg.ray, out_dir=cfg.out_dir, name=name
    )


def _call(config: dict):
    return config["fn"](*config["args"])
