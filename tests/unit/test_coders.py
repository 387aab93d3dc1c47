import pytest
import torch

from pipeline.coders.registry import build, coder_class, load
from pipeline.config import CoderConfig
from pipeline.errors import ConfigError


def test_relu_initialisation_follows_the_april_2024_recipe():
    torch.manual_seed(0)
    coder = build(CoderConfig(n_features=64, init_decoder_norm=0.1), d_in=16)
    torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.full((64,), 0.1))
    assert torch.equal(coder.w_enc, coder.w_dec.t())
    assert not coder.b_enc.any() and not coder.b_dec.any()


def test_relu_loss_parts_match_a_hand_computation():
    torch.manual_seed(0)
    coder = build(CoderConfig(n_features=8, l1_coefficient=2.0), d_in=4)
    x = torch.randn(5, 4)
    parts, f = coder.loss(x, sparsity_scale=0.5)
    f_ref = torch.relu(x @ coder.w_enc.t() + coder.b_enc)
    recon = ((x - (f_ref @ coder.w_dec.t() + coder.b_dec)) ** 2).sum(1).mean()
    penalty = (f_ref * coder.w_dec.norm(dim=0)).sum(1).mean()
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(parts["reconstruction"], recon)
    torch.testing.assert_close(parts["sparsity"], penalty)
    torch.testing.assert_close(parts["loss"], recon + 0.5 * 2.0 * penalty)


def test_relu_flops_per_token_is_the_hand_count():
    # forward: encoder 2*d*N + decoder 2*d*N multiply-adds as FLOPs; backward twice that.
    d, n = 384, 1536
    assert build(CoderConfig(n_features=n), d).flops_per_token() == (2 * d * n + 2 * d * n) * 3
    assert coder_class("relu").training_flops(d, n) == 12 * d * n


def test_save_and_load_round_trip_through_safetensors(tmp_path):
    coder = build(CoderConfig(n_features=32, l1_coefficient=3.0), d_in=8)
    coder.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["coder.safetensors", "config.json"]
    loaded = load(tmp_path / "c")
    assert loaded.config() == coder.config()
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded.loss(x)[0]["loss"], coder.loss(x)[0]["loss"])


def test_unknown_kind_and_bad_width_are_refused():
    with pytest.raises(ConfigError, match="coder.kind"):
        build(CoderConfig(kind="gated"), 8)
    with pytest.raises(ConfigError, match="coder.n_features"):
        build(CoderConfig(n_features=0), 8)
