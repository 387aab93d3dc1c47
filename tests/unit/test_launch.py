"""What a sweep hands its launcher's jobs: overrides that give back its configuration."""

import pytest

from pipeline.errors import ConfigError
from pipeline.sweep.overrides import differing_overrides

from conftest import compose


def test_overrides_give_back_the_configuration_with_awkward_values():
    cfg = compose(
        "sweep=smoke", "sweep.pack=3", "harvest.hooks=[resid_post.1,mlp_in.2]", "train.lr=1e-30", "launcher=slurm"
    )
    cfg.out_dir = "runs/a b'c,d\\"
    cfg.data.name = "it's [a], {b}: c\\'d"
    cfg.launcher.setup = ["module load cuda", "export X='1 2'"]
    again = compose(*differing_overrides(cfg, compose()))
    assert again == cfg
    assert differing_overrides(compose(), compose()) == []


def test_sweep_name_pack_and_retries_are_set_on_the_command_line():
    cfg = compose("sweep=smoke", "sweep.pack=3", "sweep.max_retries=4")
    assert (cfg.sweep.name, cfg.sweep.pack, cfg.sweep.max_retries, cfg.sweep.arms) == ("smoke", 3, 4, [])
    assert compose("sweep.name=smoke") == compose("sweep=smoke")
    with pytest.raises(ConfigError, match="sweep.pack"):
        compose("sweep.pack=many")
