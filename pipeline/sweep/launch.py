"""Handing a sweep's packs of arms to the Hydra launcher plugin that `launcher.name` chooses.

Each Hydra job trains one pack (`pipeline.sweep.job.train_pack`); its overrides name only the out_dir and
the pack's arms, whose configurations it reads from the sweep folder. `local` is Hydra's basic launcher
(jobs one after another in this process), `ray` the project's Ray task launcher
(`hydra_plugins/pipeline_launchers`), `slurm` hydra-submitit-launcher (a Slurm job array submitted
through submitit; the call waits for the array to finish).
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext

from pipeline.coders.registry import coder_class
from pipeline.config import CONF_DIR, PipelineConfig
from pipeline.distributed.cluster import check_address, check_fits
from pipeline.distributed.ray_train import needs_workers, worker_count
from pipeline.errors import ConfigError
from pipeline.layout import SweepDir
from pipeline.sweep.job import job_overrides, train_pack
from pipeline.sweep.overrides import format_value, quote
from pipeline.sweep.plan import Arm
from pipeline.sweep.results import read_row, write_row

HYDRA_LAUNCHERS = {"local": "basic", "ray": "pipeline_ray", "slurm": "submitit_slurm"}


def check_launcher(cfg: PipelineConfig) -> None:
    """Refuses a launcher that cannot run here, before any work starts."""
    if cfg.dry_run:
        return
    if cfg.launcher.name == "ray":
        check_ray_launcher(cfg)
    if cfg.launcher.name != "slurm":
        return
    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        raise ConfigError(
            f"launcher.name: slurm needs Slurm's {missing[0]}, which is not on PATH; run on a Slurm login node"
        )


def check_ray_launcher(cfg: PipelineConfig) -> None:
    """A `ray.address` that answers, and packs a local instance could place: each a task of `cpus_per_arm`
    CPUs and `gpus_per_arm` GPUs, or above one GPU that many Ray Train workers of one GPU each."""
    launcher = cfg.launcher
    check_address(cfg.ray)
    fields = {"CPU": "launcher.cpus_per_arm", "GPU": "launcher.gpus_per_arm"}
    if needs_workers(launcher):
        check_fits(cfg.ray, {"GPU": worker_count(cfg)}, fields, "a pack's Ray Train workers")
    else:
        check_fits(cfg.ray, {"CPU": launcher.cpus_per_arm, "GPU": launcher.gpus_per_arm}, fields, "a pack's Ray task")


def packs(arms: list[Arm], pack: int) -> list[list[Arm]]:
    """Arms that see the same batches (same arrays, batch size and seed), in groups of at most `pack`."""
    by_data: dict[tuple, list[Arm]] = {}
    for arm in arms:
        by_data.setdefault((arm.hook, arm.target_hook, arm.layers, arm.batch_size, arm.seed), []).append(arm)
    for group in by_data.values():
        group.sort(key=_stack_order)  # stable: arms that can stack end up side by side, in one pack
    return [group[i : i + pack] for group in by_data.values() for i in range(0, len(group), pack)]


def _stack_order(arm: Arm) -> tuple:
    """Equal for arms that differ only in what a stack lets differ per arm (`train.stack_arms`): lr, and a
    per-arm penalty."""
    kind = coder_class(arm.kind)
    per_arm_sparsity = kind.stackable and kind.sparsity_field in kind.per_arm_fields
    return arm.kind, arm.n_features, arm.steps, arm.skip_connection, 0.0 if per_arm_sparsity else arm.sparsity


def launcher_fields(cfg: PipelineConfig, sweep_dir: Path, group: str) -> dict[str, Any]:
    """The `hydra.launcher` fields of the chosen plugin, from the pipeline's own launcher and ray settings."""
    launcher = cfg.launcher
    if launcher.name == "ray":
        # Above one GPU an arm trains on Ray Train workers, which reserve the GPUs themselves.
        gpus = 0.0 if needs_workers(launcher) else launcher.gpus_per_arm
        return {"address": cfg.ray.address, "num_cpus": cfg.ray.num_cpus,
                "cpus_per_job": launcher.cpus_per_arm, "gpus_per_job": gpus}  # fmt: skip
    if launcher.name == "slurm":
        return {
            "submitit_folder": launcher.submitit_folder or str(SweepDir(sweep_dir).submitit / "%j"),
            "name": group,
            "nodes": 1,
            "tasks_per_node": 1,
            "gpus_per_node": int(launcher.gpus_per_arm),
            "cpus_per_task": max(1, round(launcher.cpus_per_arm)),
            "timeout_min": launcher.time_min,
            "mem_gb": launcher.mem_gb or None,
            "partition": launcher.partition or None,
            "account": launcher.account or None,
            "qos": launcher.qos or None,
            "constraint": launcher.constraint or None,
            "array_parallelism": launcher.array_parallelism,
            "setup": list(launcher.setup) or None,
            "max_num_timeout": 0,  # a job past its time limit is not resubmitted; the next sweep run resumes it
        }
    return {}


def hydra_overrides(cfg: PipelineConfig, sweep_dir: Path, group: str) -> list[str]:
    """Hydra's own settings for the launch: the plugin, where job folders go, and no logging set-up of its own."""
    fields = launcher_fields(cfg, sweep_dir, group)
    return [
        f"hydra/launcher={HYDRA_LAUNCHERS[cfg.launcher.name]}",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        f"hydra.sweep.dir={quote(str(SweepDir(sweep_dir).jobs))}",
        *(f"hydra.launcher.{k}={format_value(v)}" for k, v in fields.items()),
    ]


def launch(cfg: PipelineConfig, arms: list[Arm], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    """Runs every pack of `arms` as one job of the chosen launcher; returns the rows the jobs wrote.

    `hook` and `group` reach the jobs through the plan in `sweep_dir`, and each arm's configuration
    through `arms.json` beside it, both written before this is called.
    """
    groups = packs(arms, cfg.sweep.pack)
    if not groups:
        return []
    sweep_dir = sweep_dir.resolve()  # jobs may start in another directory, or on another machine
    attempts = {arm.run_id: (read_row(sweep_dir, arm.run_id) or {}).get("attempts", 0) for arm in arms}
    returns = _run_jobs(cfg, groups, sweep_dir, group)
    rows = []
    for pack, ret in zip(groups, returns):
        try:
            rows.extend(ret.return_value)
        except Exception as err:  # noqa: BLE001 - the job died outside run_arms (which records its own failures)
            rows.extend(_record_failure(sweep_dir, pack, attempts, err))
    return rows


@contextmanager
def hydra_launcher(cfg: PipelineConfig, sweep_dir: Path, group: str) -> Iterator[Launcher]:
    """The Hydra launcher plugin `launcher.name` chooses, set up to run `train_pack`.

    The launcher composes each job's configuration from `conf/`, these Hydra settings and the job's own overrides.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="sweep"):
        config = compose("config", hydra_overrides(cfg, sweep_dir, group), return_hydra_config=True)
        # The project sets no Hydra callbacks, so the jobs notify none: the base Callback does nothing.
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callback())
        yield Plugins.instance().instantiate_launcher(hydra_context=context, task_function=train_pack, config=config)


def _run_jobs(cfg: PipelineConfig, groups: list[list[Arm]], sweep_dir: Path, group: str) -> list:
    out_dir = Path(cfg.out_dir).resolve()
    with hydra_launcher(cfg, sweep_dir, group) as launcher:
        jobs = [job_overrides(out_dir, [a.run_id for a in pack]) for pack in groups]
        try:
            return list(launcher.launch(jobs, initial_job_idx=0))
        except FileNotFoundError as err:  # the scheduler's submit command (sbatch) is missing
            raise ConfigError(
                f"launcher.name: {cfg.launcher.name} could not run {err.filename!r}: {err.strerror}"
            ) from err


def _record_failure(sweep_dir: Path, pack: list[Arm], attempts: dict[str, int], error: BaseException) -> list[dict]:
    """A failed row for each arm of the pack that wrote no row of its own in this launch."""
    rows = []
    for arm in pack:
        row = read_row(sweep_dir, arm.run_id)
        if row is None or row["attempts"] == attempts[arm.run_id]:
            print(f"sweep: arm {arm.run_id} failed: its job ended with {type(error).__name__}: {error}", flush=True)
            row = write_row(
                sweep_dir, arm, "failed", attempts[arm.run_id] + 1, error=f"{type(error).__name__}: {error}"
            )
        rows.append(row)
    return rows
