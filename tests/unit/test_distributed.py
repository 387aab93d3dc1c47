"""Parallel modes and GPU counts that cannot train a coder are refused before any rank starts (the runs over two
ranks are in tests/integration/test_distributed.py)."""

import pytest
import torch

from pipeline.config import CoderConfig
from pipeline.errors import ConfigError
from pipeline.train.parallel import parallel_for

from integration.test_distributed import _train


@pytest.mark.parametrize(
    ("parallel", "coder", "field"),
    [
        ("pipes", CoderConfig(), "train.parallel"),
        ("ddp", CoderConfig(kind="batchtopk", n_features=32, k=4), "train.parallel"),
        ("features", CoderConfig(kind="transcoder", n_features=32), "train.parallel"),
        ("features", CoderConfig(n_features=0), "coder.n_features"),
    ],
)
def test_a_mode_that_cannot_train_the_coder_is_refused_naming_the_field(parallel, coder, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        parallel_for(_train(parallel)).build(coder, 16, 1, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["launcher.gpus_per_arm=1.5", "train.parallel=ddp"], "launcher.gpus_per_arm"),
        (["launcher.gpus_per_arm=2"], "train.parallel"),
    ],
)
def test_several_gpus_per_arm_need_whole_gpus_and_a_parallel_mode(overrides, field):
    from conftest import compose

    from pipeline.distributed.ray_train import needs_workers, worker_count

    cfg = compose("launcher=ray", *overrides)
    assert needs_workers(cfg.launcher)
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        worker_count(cfg)
