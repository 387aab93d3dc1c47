"""A Hydra launcher that runs each job as a Ray task, with the CPUs and (fractional) GPUs it asks for.

Hydra's own Ray launcher pins an old Ray; this one uses only `ray.remote`, so it follows Ray's releases.
Importing this module must stay cheap and import no Ray: Hydra imports every plugin when it starts.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayTaskLauncherConf:
    _target_: str = "hydra_plugins.pipeline_launchers.ray_launcher.RayTaskLauncher"
    address: str = ""  # Ray cluster to join ("auto" or host:port); empty = a local instance, unless already connected
    num_cpus: int = 0  # CPUs of a local instance started here; 0 = all of this machine's
    cpus_per_job: float = 1.0  # CPUs each job reserves
    gpus_per_job: float = 0.0  # GPUs each job reserves; fractions let several jobs share one GPU
    max_retries: int = 0  # times Ray re-runs a job whose worker process died


ConfigStore.instance().store(group="hydra/launcher", name="pipeline_ray", node=RayTaskLauncherConf, provider="pipeline")


def run_hydra_job(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig, singleton_state: dict[type, Any]
) -> JobReturn:
    """The body of each Ray task: Hydra's singletons as the driver had them, then the job itself."""
    Singleton.set_state(singleton_state)
    setup_globals()
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class RayTaskLauncher(Launcher):
    def __init__(self, address: str, num_cpus: int, cpus_per_job: float, gpus_per_job: float, max_retries: int) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_job, self.gpus_per_job, self.max_retries = cpus_per_job, gpus_per_job, max_retries
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        self._connect()
        task = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job, max_retries=self.max_retries)(
            run_hydra_job
        )
        log.info(f"Launching {len(job_overrides)} jobs as Ray tasks")
        # The singletons are captured after the sweep configs are loaded, so each task sees the same state.
        configs = [self._job_config(initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
        state = Singleton.get_state()
        refs = [task.remote(self.hydra_context, self.task_function, c, state) for c in configs]
        return [self._result(ray, ref, overrides) for ref, overrides in zip(refs, job_overrides)]

    def _connect(self) -> None:
        """As every stage joins Ray: a host:port that does not answer is refused in seconds, a local instance
        does not outlive this process, and a driver already on a cluster (a Ray job, a test session) keeps it."""
        from pipeline.config import RayConfig
        from pipeline.distributed.cluster import connect

        connect(RayConfig(address=self.address, num_cpus=self.num_cpus))

    def _job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
            config.hydra.job.num = idx
        return config

    @staticmethod
    def _result(ray, ref, overrides: Sequence[str]) -> JobReturn:
        """The job's own return, or a failed one when its worker died (the other jobs still finish)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=err)
