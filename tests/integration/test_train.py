"""A dictionary trained to the end on the synthetic store (the loop's parts are in tests/unit/test_train.py)."""

import json

from pipeline.coders.registry import load
from pipeline.config import CoderConfig, TrackingConfig, TrainConfig
from pipeline.train.trainer import train_run

from conftest import SYNTHETIC_D as D
from unit.test_train import _data


def test_training_learns_the_synthetic_dictionary_and_writes_its_run(store, tmp_path):
    data = _data(store)
    coder_cfg = CoderConfig(n_features=128, l1_coefficient=0.5)
    train_cfg = TrainConfig(tokens=120_000, batch_size=256, lr=3e-3)
    metrics = train_run(coder_cfg, train_cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.25 and metrics["l0"] < 40
    assert metrics["steps"] == 468 and metrics["tokens"] == 468 * 256
    assert metrics["flops"] == metrics["tokens"] * 12 * D * 128
    assert metrics["dead_window_tokens"] == metrics["tokens"]  # shorter than the 10M default window
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["fvu"] == metrics["fvu"]
    coder = load(tmp_path / "run" / "coder")
    assert coder.n_features == 128
