"""Choosing the sweep's Hydra launcher by config, and what each one is handed (no Slurm here: what it would submit)."""

import re
import shutil
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.sweep.configs import read_arm_configs, write_arm_configs
from pipeline.sweep.job import job_overrides
from pipeline.sweep.launch import hydra_launcher, launch
from pipeline.sweep.plan import plan
from pipeline.sweep.spec import SweepSpec

from conftest import compose

NO_SBATCH = pytest.mark.skipif(
    shutil.which("sbatch") is not None, reason="Slurm is installed: this would submit for real"
)


@pytest.fixture
def submitit_sees_a_cluster(monkeypatch):
    """submitit builds a Slurm executor only where `srun` is on PATH; everything after that probe runs for real."""
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))


@pytest.mark.cluster
def test_hydra_discovers_the_projects_ray_launcher_from_the_installed_package(tmp_path):
    script = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "print(sorted(c.__module__ + '.' + c.__name__ for c in Plugins.instance().discover(Launcher)))\n"
    )
    found = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert "hydra_plugins.pipeline_launchers.ray_launcher.RayTaskLauncher" in found.stdout
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in found.stdout


@pytest.mark.parametrize(
    ("overrides", "plugin", "settings"),
    [
        ([], "BasicLauncher", {}),
        (
            ["launcher=ray", "launcher.gpus_per_arm=0.25", "launcher.cpus_per_arm=2", "ray.address=auto"],
            "RayTaskLauncher",
            {"gpus_per_job": 0.25, "cpus_per_job": 2.0, "address": "auto"},
        ),
        # Above one GPU the pack's Ray Train workers reserve the GPUs, not the job that starts them.
        (["launcher=ray", "launcher.gpus_per_arm=2", "train.parallel=ddp"], "RayTaskLauncher", {"gpus_per_job": 0.0}),
        (
            ["launcher=slurm", "launcher.partition=gpu"],
            "SlurmLauncher",
            {"params": {"partition": "gpu", "gpus_per_node": 1}},
        ),
    ],
)
def test_launcher_name_chooses_the_hydra_plugin_and_its_resources(tmp_path, overrides, plugin, settings):
    cfg = compose(f"out_dir={tmp_path}", *overrides)
    with hydra_launcher(cfg, tmp_path / "sweep", "grp") as launcher:
        assert type(launcher).__name__ == plugin
        for name, value in settings.items():
            got = getattr(launcher, name)
            assert (value.items() <= got.items()) if isinstance(value, dict) else got == value
        assert launcher.config.hydra.sweep.dir == str(tmp_path / "sweep" / "jobs")


@NO_SBATCH
def test_launcher_slurm_without_sbatch_stops_before_any_work(tmp_path, capsys):
    assert main(["run", f"out_dir={tmp_path / 'out'}", "sweep=smoke", "launcher=slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: launcher.name: slurm") and "sbatch" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main(["run", f"out_dir={tmp_path / 'out'}", "launcher=slurm", "launcher.gpus_per_arm=0.5"]) == 2
    assert "launcher.gpus_per_arm: Slurm jobs take whole GPUs" in capsys.readouterr().err


def _sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.MULTILINE))


@NO_SBATCH
def test_the_slurm_launcher_writes_one_array_job_per_pack_of_arms(tmp_path, submitit_sees_a_cluster):
    from submitit.core.utils import DelayedSubmission

    arms = plan(SweepSpec(budgets=[1e9], n_features=[8, 16, 32, 64, 128], lrs=[1e-3], batch_size=10), 16, 10**6)
    slurm = [
        "launcher=slurm", "launcher.partition=gpu-small", "launcher.account=proj", "launcher.qos=high",
        "launcher.time_min=90", "launcher.gpus_per_arm=1", "launcher.cpus_per_arm=4", "launcher.mem_gb=32",
        "launcher.array_parallelism=2", "launcher.setup=[module load cuda]", "sweep.pack=2",
    ]  # fmt: skip
    cfg = compose(f"out_dir={tmp_path}", *slurm)
    (tmp_path / "sweep").mkdir()
    write_arm_configs(tmp_path / "sweep", cfg, arms)
    with pytest.raises(ConfigError, match="launcher.name: slurm could not run 'sbatch'"):
        launch(cfg, arms, "resid_post.0", tmp_path / "sweep", "tiny")

    # submitit writes the batch script and one pickled call per job before it calls sbatch.
    folder = tmp_path / "sweep" / "submitit"
    [script] = folder.glob(".submission_file_*.sh")
    text = script.read_text()
    options = _sbatch_options(text)
    assert options["partition"] == "gpu-small" and options["account"] == "proj" and options["qos"] == "high"
    assert options["time"] == "90" and options["gpus-per-node"] == "1" and options["cpus-per-task"] == "4"
    assert options["mem"] == "32GB" and options["nodes"] == "1" and options["job-name"] == "tiny"
    assert options["array"] == "0-2%2"  # 5 arms in packs of 2: a 3-job array, at most 2 running at once
    assert "module load cuda" in text and f"{sys.executable} -u -m submitit.core._submit {folder}/%j" in text

    calls = [DelayedSubmission.load(p) for p in sorted(folder.glob("*.pkl"))]
    assert len(calls) == 3
    assert {type(c.function).__name__ for c in calls} == {"SlurmLauncher"}
    assert calls[0].function.task_function.__qualname__ == "train_pack"
    packs = []
    for call in calls:
        overrides, job_dir_key = call.args[0], call.args[1]
        assert job_dir_key == "hydra.sweep.dir"
        job = compose(*overrides)  # what the job will compose on its node: where the sweep is, and its arms
        assert overrides == job_overrides(tmp_path, job.sweep.arms) and job.out_dir == str(tmp_path)
        [arm] = read_arm_configs(tmp_path / "sweep", job.sweep.arms[:1])  # what it then trains with
        assert arm.launcher.partition == "gpu-small" and arm.sweep.pack == 2
        packs.append(job.sweep.arms)
    assert sorted(len(p) for p in packs) == [1, 2, 2]
    assert sorted(r for p in packs for r in p) == sorted(a.run_id for a in arms)
