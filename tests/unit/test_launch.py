"""What a sweep hands its launcher's jobs: overrides that give back its configuration."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.layout import SweepDir
from pipeline.sweep.configs import arm_config, read_arm_configs, write_arm_configs
from pipeline.sweep.job import job_overrides
from pipeline.sweep.plan import plan
from pipeline.sweep.spec import SweepSpec

from conftest import compose


def _awkward():
    """A sweep's configuration with values that quoting and typing could get wrong."""
    cfg = compose(
        "sweep=smoke", "sweep.pack=3", "harvest.hooks=[resid_post.1,mlp_in.2]", "train.lr=1e-30", "launcher=slurm"
    )
    cfg.data.name = "it's [a], {b}: c\\'d"
    cfg.launcher.setup = ["module load cuda", "export X='1 2'"]
    return cfg


def test_every_arms_configuration_is_read_back_as_the_same_dataclasses(tmp_path):
    cfg = replace(_awkward(), out_dir=str(tmp_path / "out"))
    arms = plan(SweepSpec(kind="topk", budgets=[1e9], n_features=[8, 16], lrs=[1e-3, 3e-4], sparsity=[4]), 16, 10**6)
    write_arm_configs(tmp_path, cfg, arms)
    assert sorted(json.loads(SweepDir(tmp_path).arms.read_text())) == sorted(a.run_id for a in arms)
    picked = [arms[2], arms[0]]
    again = read_arm_configs(tmp_path, [a.run_id for a in picked])
    assert again == [arm_config(cfg, a) for a in picked]
    first = again[1]
    assert (first.coder.kind, first.coder.n_features, first.coder.k, first.train.lr) == ("topk", 8, 4, 1e-3)
    assert first.train.tokens == arms[0].tokens and first.sweep.arms == [arms[0].run_id]
    assert first.data.name == cfg.data.name and first.launcher.setup == cfg.launcher.setup
    with pytest.raises(KeyError, match="sweep.arms: nope"):
        read_arm_configs(tmp_path, ["nope"])


def test_a_job_is_told_only_its_out_dir_and_its_arms():
    out_dir = Path("runs/a b'c,d\\")
    ids = ["relu_C1e+09_N8_lr0.001_l1-5_s0", "it's, odd"]
    job = compose(*job_overrides(out_dir, ids))
    assert job == replace(compose(), out_dir=str(out_dir), sweep=replace(compose().sweep, arms=ids))


def test_sweep_name_pack_and_retries_are_set_on_the_command_line():
    cfg = compose("sweep=smoke", "sweep.pack=3", "sweep.max_retries=4")
    assert (cfg.sweep.name, cfg.sweep.pack, cfg.sweep.max_retries, cfg.sweep.arms) == ("smoke", 3, 4, [])
    assert compose("sweep.name=smoke") == compose("sweep=smoke")
    with pytest.raises(ConfigError, match="sweep.pack"):
        compose("sweep.pack=many")
