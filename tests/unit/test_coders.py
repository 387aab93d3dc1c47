import pytest
import torch

from pipeline.coders.registry import AnyCoderConfig, build, load, training_flops
from pipeline.errors import ConfigError


def test_relu_initialisation_follows_the_april_2024_recipe():
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(n_features=64, init_decoder_norm=0.1), d_in=16)
    torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.full((64,), 0.1))
    assert torch.equal(coder.w_enc, coder.w_dec.t())
    assert not coder.b_enc.any() and not coder.b_dec.any()


def test_relu_loss_parts_match_a_hand_computation():
    torch.manual_seed(0)
    coder = build(AnyCoderConfig(n_features=8, l1_coefficient=2.0), d_in=4)
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
    assert build(AnyCoderConfig(n_features=n), d).flops_per_token() == (2 * d * n + 2 * d * n) * 3
    assert training_flops(AnyCoderConfig(n_features=n), d) == 12 * d * n


def test_save_and_load_round_trip_through_safetensors(tmp_path):
    coder = build(AnyCoderConfig(n_features=32, l1_coefficient=3.0), d_in=8)
    coder.save(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["coder.safetensors", "config.json"]
    loaded = load(tmp_path / "c")
    assert loaded.config() == coder.config()
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded.loss(x)[0]["loss"], coder.loss(x)[0]["loss"])


def test_unknown_kind_and_bad_width_are_refused():
    with pytest.raises(ConfigError, match="coder.kind"):
        build(AnyCoderConfig(kind="gated"), 8)
    with pytest.raises(ConfigError, match="coder.n_features"):
        build(AnyCoderConfig(n_features=0), 8)


def test_the_coder_node_holds_every_kinds_own_fields_and_each_kind_reads_only_its_own():
    from dataclasses import fields

    from pipeline.coders.registry import KINDS

    union = {f.name for f in fields(AnyCoderConfig)}
    for cls in KINDS.values():
        own = {f.name for f in fields(cls.config_class)}
        assert own <= union and cls.sparsity_field in own and set(cls.per_arm_fields) <= own
    coder = build(AnyCoderConfig(kind="batchtopk", n_features=16, k=2, threshold_momentum=0.5), 4)
    assert coder.threshold_momentum == 0.5 and coder.hparams["threshold_momentum"] == 0.5


def test_a_kind_is_chosen_by_its_group_or_by_coder_kind_alike():
    from conftest import compose

    assert compose("coder=topk") == compose("coder.kind=topk")
    assert compose().coder.kind == "relu"
    cfg = compose("coder=batchtopk", "coder.threshold_momentum=0.5", "coder.k=4")
    assert (cfg.coder.kind, cfg.coder.threshold_momentum, cfg.coder.k) == ("batchtopk", 0.5, 4)


@pytest.mark.parametrize(
    ("kind", "override", "field"),
    [
        ("relu", "coder.n_features=0", "coder.n_features"),
        ("relu", "coder.l1_coefficient=-1", "coder.l1_coefficient"),
        ("topk", "coder.k=0", "coder.k"),
        ("topk", "coder.aux_k=-1", "coder.aux_k"),
        ("batchtopk", "coder.threshold_momentum=1.0", "coder.threshold_momentum"),
        ("jumprelu", "coder.jumprelu_penalty=l1", "coder.jumprelu_penalty"),
        ("clt", "coder.init_threshold=0", "coder.init_threshold"),
        ("gated", "coder.n_features=8", "coder.kind"),
    ],
)
def test_bad_coder_values_are_refused_when_composing_with_the_field_named(kind, override, field):
    from conftest import compose

    with pytest.raises(ConfigError, match=rf"^{field}: expected"):
        compose(f"coder.kind={kind}", override)


def test_values_a_kind_does_not_read_are_not_checked_for_it():
    from conftest import compose

    assert compose("coder.kind=relu", "coder.n_features=8", "coder.k=9").coder.k == 9  # k matters to topk only
