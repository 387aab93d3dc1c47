"""Training to the end on streamed rows and pairs (the stream itself: tests/unit/test_stream.py)."""

import pytest

from pipeline.activations.loading import open_activation_data
from pipeline.activations.stream import StreamingActivationData
from pipeline.coders.registry import AnyCoderConfig
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.train.trainer import train_run

from unit.test_stream import CPU, HOOK, PAIRED, _prefetch_threads


@pytest.mark.slow
def test_training_on_streamed_data_learns_the_synthetic_dictionary(store, tmp_path):
    cfg = TrainConfig(tokens=120_000, batch_size=256, lr=3e-3, eval_tokens=512, cache="none")
    data = open_activation_data(store, HOOK, cfg, CPU)
    assert isinstance(data, StreamingActivationData)
    coder = AnyCoderConfig(n_features=128, l1_coefficient=0.5)
    metrics = train_run(coder, cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.3 and metrics["steps"] == 468
    assert not _prefetch_threads()


def test_a_transcoder_learns_from_streamed_pairs_and_a_missing_target_is_refused(paired_store, tmp_path):
    cfg = TrainConfig(
        **{**PAIRED, "hook": "mlp_in.0", "tokens": 200 * 128, "batch_size": 128, "lr": 1e-2, "cache": "none"}
    )
    data = open_activation_data(paired_store, cfg.hook, cfg, CPU)
    assert isinstance(data, StreamingActivationData)
    coder = AnyCoderConfig(kind="transcoder", n_features=64, l1_coefficient=0.05)
    metrics = train_run(coder, cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.3 and metrics["steps"] == 200
    assert not _prefetch_threads()
    with pytest.raises(
        ConfigError, match=r"train.target_hook: the store has hooks \['mlp_in.0', 'mlp_out.0'\], not 'mlp_out.3'"
    ):
        open_activation_data(paired_store, "mlp_in.0", TrainConfig(**{**PAIRED, "target_hook": "mlp_out.3"}), CPU)
