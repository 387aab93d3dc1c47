"""JumpReLU with Gemma Scope 2's quadratic penalty towards `coder.target_l0`."""

import copy
from dataclasses import replace

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build, training_flops
from pipeline.config import TrainConfig
from pipeline.distributed.process_group import World
from pipeline.errors import ConfigError
from pipeline.train.arm_run import ArmRun
from pipeline.train.sharded import ShardedCoder
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid, train_run

from unit.test_stack import DISABLED, _assert_close_runs, _specs

pytestmark = pytest.mark.usefixtures("one_thread")

QUADRATIC = dict(kind="jumprelu", jumprelu_penalty="quadratic", jumprelu_bandwidth=0.05, init_threshold=0.05)


def _coder(n: int = 32, d: int = 8, seed: int = 0, **fields):
    torch.manual_seed(seed)
    return build(AnyCoderConfig(n_features=n, **QUADRATIC | fields), d)


def test_the_penalty_and_threshold_gradient_match_a_hand_computation():
    eps, lam, target, scale = 0.05, 0.7, 6.0, 0.5
    coder = _coder(l1_coefficient=lam, target_l0=target)
    with torch.no_grad():
        coder.b_enc.copy_(torch.linspace(-0.1, 0.1, 32))
    x = torch.randn(64, 8)
    parts, f = coder.loss(x, sparsity_scale=scale)

    pre = (x @ coder.w_enc.t() + coder.b_enc).detach()
    theta, w_dec, b_dec = coder.threshold.detach(), coder.w_dec.detach(), coder.b_dec.detach()
    counts = (pre > theta).float().sum(1)
    sparsity = (2 / target * (counts - target) ** 2).mean()
    recon = ((x - f @ w_dec.t() - b_dec) ** 2).sum(1).mean()
    torch.testing.assert_close(f, pre * (pre > theta))
    torch.testing.assert_close(parts["sparsity"], sparsity)
    torch.testing.assert_close(parts["reconstruction"], recon)
    torch.testing.assert_close(parts["loss"], recon + scale * lam * sparsity)

    parts["loss"].backward()
    # d/dtheta through the step's pseudo-derivative -(1/eps) K, weighted per row by d/dL0 = (4/T)(L0 - T).
    window = ((pre - theta).abs() < eps / 2).float()
    dl_df = 2 * (f @ w_dec.t() + b_dec - x) @ w_dec / len(x)
    dl_dtheta = (dl_df * -(theta / eps) * window).sum(0)
    per_row = scale * lam * 4 / target * (counts - target) / len(x)
    dl_dtheta = dl_dtheta + (per_row[:, None] * -(1 / eps) * window).sum(0)
    assert window.sum() > 0 and (counts != target).any()
    torch.testing.assert_close(coder.log_threshold.grad, theta * dl_dtheta)


def test_target_l0_is_checked_only_where_the_quadratic_penalty_reads_it():
    with pytest.raises(ConfigError, match=r"^coder.target_l0: expected a count in \(0, n_features=32\]"):
        _coder(target_l0=33)
    with pytest.raises(ConfigError, match=r"^coder.target_l0: expected"):
        _coder(target_l0=0)
    assert _coder(jumprelu_penalty="l0", target_l0=33).penalty == "l0"
    with pytest.raises(ConfigError, match=r"^coder.jumprelu_penalty: expected one of l0, tanh, got 'quadratic'"):
        build(AnyCoderConfig(kind="clt", n_features=32, jumprelu_penalty="quadratic"), 8, 2)  # jumprelu's alone


def test_after_step_holds_decoder_norms_and_flops_are_jumprelus():
    coder = _coder(init_decoder_norm=0.5)
    with torch.no_grad():
        coder.w_dec.mul_(torch.rand(32) + 0.5)
    coder.after_step()
    torch.testing.assert_close(coder.w_dec.norm(dim=0), torch.full((32,), 0.5))
    assert training_flops(AnyCoderConfig(n_features=1536, **QUADRATIC), 384) == 12 * 384 * 1536


def test_the_sharded_forward_on_one_rank_is_its_own_loss():
    coder = _coder(target_l0=4, preact_coefficient=0.1)
    whole = copy.deepcopy(coder)
    x = torch.randn(32, 8)
    parts, f = ShardedCoder(coder, World(0, 1)).loss(x, 0.5)
    expected, f_whole = whole.loss(x, 0.5)
    assert parts.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f, f_whole)


def test_stacked_arms_equal_the_arms_trained_alone(data, tmp_path):
    train = TrainConfig(tokens=12 * 256, batch_size=256, lr=3e-3, log_every=4)
    arm = AnyCoderConfig(n_features=32, **QUADRATIC | dict(target_l0=4.0, l1_coefficient=0.1))
    arms = [(arm, train), (replace(arm, l1_coefficient=0.3), replace(train, lr=1e-2))]
    runs = {i: ArmRun(spec, data, DISABLED) for i, spec in enumerate(_specs(arms, tmp_path / "probe"))}
    assert [sorted(s.arms) for s in build_stacks(runs) if s.coder is not None] == [[0, 1]]
    fused = train_grid(_specs(arms, tmp_path), data, DISABLED)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(coder_cfg, train_cfg, data, tmp_path / f"alone{i}", DISABLED, f"a{i}", "g")
        _assert_close_runs(fused[i], alone, tmp_path / f"grid{i}", tmp_path / f"alone{i}")


def test_training_pulls_the_l0_towards_its_target(synthetic_store, tmp_path):
    data = ActivationData(synthetic_store, "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu"))
    train_cfg = TrainConfig(tokens=40_960, batch_size=256, lr=2e-2, eval_tokens=512)
    # Without the penalty these thresholds keep an L0 of about 15; Adam moves a log-threshold by about lr a step.
    start = dict(init_threshold=0.3, init_decoder_norm=1.0, l1_coefficient=0.3)
    l0 = {}
    for target in (4.0, 48.0):
        cfg = AnyCoderConfig(n_features=128, **QUADRATIC | start | dict(target_l0=target))
        l0[target] = train_run(cfg, train_cfg, data, tmp_path / f"t{target:g}", DISABLED, "r", "g")["l0"]
    assert abs(l0[4.0] - 4) < 1.5 and l0[48.0] > 17, l0
