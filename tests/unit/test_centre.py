"""train.center: inputs less the store's mean in training, folded into the saved coder's biases."""

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.base import SparseActs
from pipeline.coders.registry import KINDS, AnyCoderConfig, build, load
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import evaluate
from pipeline.train.centre import check_center
from pipeline.train.trainer import train_run

SAE_KINDS = [kind for kind, cls in KINDS.items() if not cls.target_field]


def _dense(f):
    return f.dense() if isinstance(f, SparseActs) else f


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_a_folded_coder_acts_on_x_as_the_trained_one_acted_on_x_less_the_mean(kind):
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(kind=kind, n_features=24, k=4), 8).eval()
    with torch.no_grad():
        for p in (coder.b_enc, coder.b_dec):
            p.copy_(0.3 * torch.randn_like(p))
    mean, x = torch.randn(8), torch.randn(64, 8) + 2
    before_f = _dense(coder.encode(x - mean))
    before = coder.decode(coder.encode(x - mean)) + mean
    coder.fold_input_mean(mean)
    assert torch.allclose(_dense(coder.encode(x)), before_f, atol=1e-5)
    assert torch.allclose(coder.decode(coder.encode(x)), before, atol=1e-5)


def test_a_centred_run_saves_a_coder_of_the_uncentred_inputs(store, tmp_path):
    cfg = TrainConfig(tokens=2560, batch_size=256, eval_tokens=512, center=True)
    data = ActivationData(store, "resid_post.0", cfg, torch.device("cpu"))
    check_center("relu", True, store.attrs, "resid_post.0")
    metrics = train_run(
        AnyCoderConfig(n_features=32), cfg, data, tmp_path / "c", TrackingConfig(mode="disabled"), "c", "g"
    )
    plain = train_run(
        AnyCoderConfig(n_features=32), TrainConfig(tokens=2560, batch_size=256, eval_tokens=512), data,
        tmp_path / "p", TrackingConfig(mode="disabled"), "p", "g",
    )  # fmt: skip
    saved = load(tmp_path / "c" / "coder")
    assert evaluate(saved, [data.eval])["fvu"] == pytest.approx(metrics["fvu"], rel=1e-6)
    assert metrics["fvu"] != plain["fvu"]  # centring changed what was learned
    assert not torch.equal(saved.b_dec, load(tmp_path / "p" / "coder").b_dec)


def test_centring_is_refused_for_transcoders_and_for_stores_without_means(store):
    with pytest.raises(ConfigError, match="train.center: a transcoder predicts another array"):
        check_center("transcoder", True, store.attrs, "resid_post.0")
    old = {**store.attrs, "norm_stats": {"resid_post.0": {"mean_sq_norm": 1.0, "n_rows": 4}}}
    with pytest.raises(ConfigError, match="train.center: the store records no mean of resid_post.0"):
        check_center("relu", True, old, "resid_post.0")
    check_center("transcoder", False, old, "resid_post.0")  # off: nothing to check
