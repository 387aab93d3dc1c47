"""Training on streamed activations to the end (the stream's order, buffer and threads are in tests/unit/test_stream.py)."""

import pytest

from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.activations.loading import open_activation_data
from pipeline.activations.stream import StreamingActivationData
from pipeline.train.trainer import train_run

from unit.test_stream import CPU, HOOK, _prefetch_threads

pytestmark = pytest.mark.slow


def test_training_on_streamed_data_learns_the_synthetic_dictionary(store, tmp_path):
    cfg = TrainConfig(tokens=120_000, batch_size=256, lr=3e-3, eval_tokens=512, cache="none")
    data = open_activation_data(store, HOOK, cfg, CPU)
    assert isinstance(data, StreamingActivationData)
    coder = CoderConfig(n_features=128, l1_coefficient=0.5)
    metrics = train_run(coder, cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.3 and metrics["steps"] == 468
    assert not _prefetch_threads()
