"""Parallel modes and GPU counts that cannot train a coder are refused before any rank starts (the runs over two
ranks are in tests/integration/test_distributed.py)."""

import pytest
import torch

from pipeline.coders.registry import AnyCoderConfig
from pipeline.errors import ConfigError
from pipeline.train.parallel import parallel_for

from integration.test_distributed import _train


@pytest.mark.parametrize(
    ("parallel", "coder", "field"),
    [
        ("ddp", AnyCoderConfig(kind="batchtopk", n_features=32, k=4), "train.parallel"),
        ("features", AnyCoderConfig(kind="transcoder", n_features=32), "train.parallel"),
    ],
)
def test_a_mode_that_cannot_train_the_coder_is_refused_naming_the_field(parallel, coder, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        parallel_for(_train(parallel)).build(coder, 16, 1, torch.device("cpu"))
