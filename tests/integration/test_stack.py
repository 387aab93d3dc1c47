"""Every coder kind stacked in one grid equals its arms trained alone (the stacking rules: tests/unit/test_stack.py)."""

from dataclasses import replace

import pytest

from pipeline.coders.registry import AnyCoderConfig
from pipeline.config import TrainConfig
from pipeline.train.trainer import train_grid, train_run

from unit.test_stack import DISABLED, _assert_close_runs, _specs, _weights

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_stacked_arm_equals_the_arm_trained_alone(data, tmp_path):
    train = TrainConfig(tokens=25 * 256, batch_size=256, lr=1e-3, log_every=4, lambda_warmup_frac=0.2)
    relu, topk = (
        AnyCoderConfig(n_features=32),
        AnyCoderConfig(kind="topk", n_features=1024, k=3, dead_tokens_threshold=1024),
    )
    jumprelu = AnyCoderConfig(
        kind="jumprelu", n_features=32, jumprelu_penalty="l0", preact_coefficient=0.1, init_threshold=0.1
    )
    batchtopk = AnyCoderConfig(kind="batchtopk", n_features=1024, k=3, dead_tokens_threshold=1024)
    arms = [
        (relu, train),
        (replace(relu, l1_coefficient=1.0), replace(train, lr=3e-3)),
        (replace(relu, l1_coefficient=0.2), replace(train, lr=1e-2)),
        (topk, train),
        (topk, replace(train, lr=1e-2)),  # AuxK turns on midway: latents go dead after 1024 tokens
        (jumprelu, train),
        (replace(jumprelu, l1_coefficient=0.5), replace(train, lr=3e-3)),
        (batchtopk, train),
        (batchtopk, replace(train, lr=1e-2)),
    ]
    fused = train_grid(_specs(arms, tmp_path), data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(coder_cfg, train_cfg, data, tmp_path / f"alone{i}", DISABLED, f"a{i}", "g")
        # Adam's normalised steps amplify the rounding of batched products where a gradient is near zero, most for
        # batchtopk at lr 1e-2, whose rarely chosen latents get such gradients (its stacked gradients equal the
        # dense expression's: tests/unit/test_coders_sparse.py).
        atol = 1e-4 if coder_cfg.kind == "batchtopk" else 1e-5
        _assert_close_runs(fused[i], alone, tmp_path / f"grid{i}", tmp_path / f"alone{i}", atol)
        assert fused[i]["dead_fraction"] == alone["dead_fraction"] and fused[i]["l0"] == pytest.approx(
            alone["l0"], rel=1e-4
        )
    # The AuxK path was taken: some latents of each stack were dead for steps before the end.
    for stack in ((3, 4), (7, 8)):
        assert max(_weights(tmp_path / f"grid{i}")["tokens_since_fired"].max() for i in stack) > 1024 + 256
    # Each batchtopk arm kept its own running threshold.
    assert _weights(tmp_path / "grid7")["threshold"] != _weights(tmp_path / "grid8")["threshold"]
