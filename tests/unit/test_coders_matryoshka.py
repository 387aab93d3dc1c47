"""The Matryoshka BatchTopK SAE: its nested loss against plain autograd, its settings, FLOPs, stacking and training."""

from dataclasses import replace

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build, load, training_flops
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.train.arm_run import ArmRun
from pipeline.train.sharded import check_shardable
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid, train_run

from unit.test_stack import DISABLED, _assert_close_runs, _specs

pytestmark = pytest.mark.usefixtures("one_thread")


def _coder(n: int = 64, d: int = 16, seed: int = 0, **fields):
    torch.manual_seed(seed)
    return build(AnyCoderConfig(kind="matryoshka", n_features=n, **fields), d)


def test_prefixes_are_fractions_of_the_width_and_bad_fractions_are_refused():
    assert _coder(n=64).prefix_sizes == [4, 16, 64]
    assert _coder(n=1024, prefix_fractions=[0.5]).prefix_sizes == [512, 1024]
    for bad in ([0.5, 0.25], [0.0, 0.5], [0.5, 1.0], [0.001], [0.3, 0.302]):  # the last two: sizes 0, and 19 twice
        with pytest.raises(ConfigError, match=r"^coder.prefix_fractions: expected increasing fractions"):
            _coder(n=64, prefix_fractions=bad)


def test_prefix_fractions_are_set_on_the_command_line():
    from conftest import compose

    cfg = compose("coder=matryoshka", "coder.prefix_fractions=[0.125,0.5]", "coder.k=4")
    assert (cfg.coder.kind, list(cfg.coder.prefix_fractions), cfg.coder.k) == ("matryoshka", [0.125, 0.5], 4)
    with pytest.raises(ConfigError, match=r"^coder.prefix_fractions: expected"):
        compose("coder=matryoshka", "coder.prefix_fractions=[0.5,0.25]")


def test_the_nested_loss_and_its_gradients_equal_plain_autograd():
    coder = _coder(k=4, aux_k=8, dead_tokens_threshold=1, prefix_fractions=[0.125, 0.5])
    with torch.no_grad():
        coder.b_enc.normal_(0, 0.1)
        coder.b_dec.normal_()
    x = torch.randn(32, 16)
    coder.loss(x)  # the latents that did not fire are now dead, so AuxK is on
    coder.zero_grad()
    parts, f = coder.loss(x, sparsity_scale=0.5)
    parts["loss"].backward()
    grads = {name: p.grad.clone() for name, p in coder.named_parameters()}

    coder.zero_grad()
    pre = (x - coder.b_dec) @ coder.w_enc.t() + coder.b_enc
    flat = torch.relu(pre).flatten()
    index = flat.topk(4 * 32).indices
    f_plain = torch.zeros_like(flat).scatter(0, index, flat[index]).view_as(pre)
    errors = []
    for m in (8, 32, 64):  # every prefix reconstructs with its own first m features
        x_hat = f_plain[:, :m] @ coder.w_dec[:, :m].t() + coder.b_dec
        errors.append((x - x_hat).pow(2).sum(1).mean())
    dead = coder.dead()
    masked = torch.where(dead, pre.detach(), torch.tensor(float("-inf")))
    aux_index = masked.topk(8, dim=1).indices
    f_aux = torch.zeros_like(pre).scatter(1, aux_index, torch.relu(pre.gather(1, aux_index)))
    auxk = ((x - x_hat).detach() - f_aux @ coder.w_dec.t()).pow(2).sum(1).mean()
    plain = sum(errors) + 0.5 * coder.aux_k_coefficient * auxk
    plain.backward()

    assert dead.any() and parts["auxk"] > 0
    torch.testing.assert_close(f.dense(), f_plain)
    torch.testing.assert_close(parts["reconstruction"], errors[-1])
    torch.testing.assert_close(parts["prefix_reconstruction"], errors[0] + errors[1])
    torch.testing.assert_close(parts["auxk"], auxk)
    torch.testing.assert_close(parts["loss"], plain)
    for name, p in coder.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_flops_per_token_are_batchtopks():
    d, n, k = 384, 1536, 32
    expected = 3 * (2 * d * n + 2 * d * k)
    assert training_flops(AnyCoderConfig(kind="matryoshka", n_features=n, k=k), d) == expected
    assert _coder(n=n, d=d, k=k).flops_per_token() == expected


def test_its_features_are_not_split_over_ranks():
    with pytest.raises(ConfigError, match="train.parallel: features sharding supports coder.kind .*not 'matryoshka'"):
        check_shardable("matryoshka")


def test_save_and_load_round_trip(tmp_path):
    coder = _coder(k=4, prefix_fractions=[0.25])
    coder.loss(torch.randn(32, 16))  # sets the running threshold
    coder.save(tmp_path / "c")
    loaded = load(tmp_path / "c")
    assert type(loaded) is type(coder) and loaded.config() == coder.config()
    assert loaded.prefix_sizes == [16, 64] and loaded.threshold == coder.threshold > 0


def test_stacked_arms_equal_the_arms_trained_alone(data, tmp_path):
    train = TrainConfig(tokens=12 * 256, batch_size=256, lr=3e-3, log_every=4)
    matryoshka = AnyCoderConfig(kind="matryoshka", n_features=64, k=4, dead_tokens_threshold=512)
    arms = [(matryoshka, train), (matryoshka, replace(train, lr=1e-2))]
    runs = {i: ArmRun(spec, data, DISABLED) for i, spec in enumerate(_specs(arms, tmp_path / "probe"))}
    assert [sorted(s.arms) for s in build_stacks(runs) if s.coder is not None] == [[0, 1]]
    fused = train_grid(_specs(arms, tmp_path), data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(coder_cfg, train_cfg, data, tmp_path / f"alone{i}", DISABLED, f"a{i}", "g")
        _assert_close_runs(fused[i], alone, tmp_path / f"grid{i}", tmp_path / f"alone{i}")


def test_short_training_learns_the_synthetic_dictionary(synthetic_store, tmp_path):
    data = ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    train_cfg = TrainConfig(tokens=40_960, batch_size=256, lr=3e-3, eval_tokens=512)
    coder_cfg = AnyCoderConfig(kind="matryoshka", n_features=128, k=8)
    metrics = train_run(coder_cfg, train_cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.3 and 4 < metrics["l0"] < 16
    assert metrics["flops_per_token"] == load(tmp_path / "run" / "coder").flops_per_token()
