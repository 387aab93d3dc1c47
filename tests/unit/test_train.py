import json

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.base import fired_in_batch
from pipeline.coders.registry import AnyCoderConfig, build, load
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.metrics import FiringTracker, evaluate
from pipeline.train.arm_run import ArmSpec, TrainingDiverged, schedules
from pipeline.train.trainer import train_grid, train_run

from conftest import SYNTHETIC_D as D


def _data(store, **train):
    return ActivationData(store, "resid_post.0", TrainConfig(**{"eval_tokens": 512, **train}), torch.device("cpu"))


def test_inputs_are_scaled_to_mean_squared_norm_d_and_eval_rows_are_held_out(store):
    data = _data(store)
    assert (data.n_train, len(data.eval)) == (4096 - 512, 512)
    all_rows = torch.cat([data.train, data.eval])
    assert all_rows.pow(2).sum(1).mean().item() == pytest.approx(D, rel=1e-4)


def test_batch_order_is_a_pure_function_of_the_seed_and_resumable(store):
    data = _data(store)
    a = list(data.batches(256, 20, seed=1))
    b = list(data.batches(256, 20, seed=1))
    c = list(data.batches(256, 20, seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    resumed = list(data.batches(256, 20, seed=1, start_step=13))
    assert len(resumed) == 7 and all(torch.equal(x, y) for x, y in zip(a[13:], resumed))
    per_epoch = data.n_train // 256
    epoch = torch.cat(a[:per_epoch])
    assert len(torch.unique(epoch, dim=0)) == per_epoch * 256  # no row twice within an epoch


def test_schedules_warm_the_penalty_up_and_decay_the_rate():
    cfg = TrainConfig(lambda_warmup_frac=0.1, lr_decay_frac=0.2)
    assert schedules(0, 100, cfg) == (1.0, 0.1)
    assert schedules(50, 100, cfg) == (1.0, 1.0)
    assert schedules(90, 100, cfg) == (0.5, 1.0)
    assert schedules(99, 100, cfg)[0] == pytest.approx(0.05)


def test_dead_features_are_counted_over_the_trailing_window():
    tracker = FiringTracker(3, torch.device("cpu"))
    tracker.update(torch.tensor([[1.0, 0.0, 0.0]] * 10))
    tracker.update(torch.tensor([[0.0, 1.0, 0.0]] * 10))
    assert tracker.dead_fraction(window=100) == (pytest.approx(1 / 3), 20)  # short run: all its tokens
    assert tracker.dead_fraction(window=10) == (pytest.approx(2 / 3), 10)


def test_a_latent_fired_in_a_batch_when_some_row_activates_it_in_each_arm_of_a_stack():
    f = torch.tensor([[0.0, -1.0, 2.0, 0.0], [0.0, -3.0, 0.0, 1e-30]])  # zeros, negatives, one positive, a tiny one
    assert fired_in_batch(f).tolist() == [False, False, True, True]
    stack = torch.stack([f, -f])  # [arms, rows, N]
    assert fired_in_batch(stack).tolist() == [[False, False, True, True], [False, True, False, False]]
    assert fired_in_batch(f.bfloat16()).tolist() == [False, False, True, True]  # bfloat16 keeps float32's range
    assert fired_in_batch(f.half()).tolist() == [False, False, True, False]  # float16 rounds 1e-30 to 0


def test_a_perfect_reconstruction_has_zero_fvu_and_mse():
    coder = build(AnyCoderConfig(n_features=4, l1_coefficient=0.0), d_in=4)
    with torch.no_grad():
        coder.w_enc.copy_(torch.eye(4))
        coder.w_dec.copy_(torch.eye(4))
    x = torch.rand(32, 4) + 0.1  # positive, so the ReLU passes everything
    metrics = evaluate(coder, [x[:16], x[16:]])
    assert metrics["mse"] == pytest.approx(0.0, abs=1e-12) and metrics["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["l0"] == 4.0
    assert metrics["density_histogram"]["never_fired"] == 0 and sum(metrics["density_histogram"]["counts"]) == 4


def test_same_seed_gives_the_same_weights(store, tmp_path):
    data = _data(store)
    cfg = TrainConfig(tokens=5120, batch_size=256, seed=4)
    runs = [
        train_run(
            AnyCoderConfig(n_features=32), cfg, data, tmp_path / f"r{i}", TrackingConfig(mode="disabled"), "r", "g"
        )
        for i in range(2)
    ]
    assert runs[0]["loss"] == runs[1]["loss"]
    a, b = load(tmp_path / "r0" / "coder"), load(tmp_path / "r1" / "coder")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_records_what_its_coder_was_trained_on(store, tmp_path):
    data = _data(store)
    cfg = TrainConfig(tokens=512, batch_size=256)
    train_run(AnyCoderConfig(n_features=32), cfg, data, tmp_path / "r", TrackingConfig(mode="disabled"), "r", "g")
    source = json.loads((tmp_path / "r" / "coder" / "source.json").read_text())
    model = {"name": "synthetic", "revision": "", "dtype": "float32", "n_layers": 1, "d_model": D, "has_lm_head": False}
    assert source["model"] == model
    assert (source["inputs"], source["targets"], source["layers"]) == (["resid_post.0"], ["resid_post.0"], [0])
    assert source["scales"] == {"resid_post.0": data.scale} and data.scale != 1.0
    assert (
        source["dataset"]["source"] == "synthetic" and source["context_len"] == 9 and source["store"] == str(store.path)
    )
    assert source["prepend_bos"] is True and source["bos_dropped"] is True


def test_a_diverging_run_stops_with_the_step_named(store, tmp_path):
    data = _data(store)
    cfg = TrainConfig(tokens=25600, batch_size=256, lr=1e30, grad_clip=1e30, log_every=1)
    with pytest.raises(TrainingDiverged, match=r"step \d+: the loss is (nan|inf)"):
        train_run(AnyCoderConfig(n_features=32), cfg, data, tmp_path / "r", TrackingConfig(mode="disabled"), "r", "g")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_too_few_tokens_for_one_batch_is_refused(store, tmp_path):
    with pytest.raises(ConfigError, match="train.tokens"):
        train_run(
            AnyCoderConfig(),
            TrainConfig(tokens=10, batch_size=256),
            _data(store),
            tmp_path,
            TrackingConfig(mode="disabled"),
            "r",
            "g",
        )


class Killed(Exception):
    pass


def _kill_after(monkeypatch, cls, steps: int) -> None:
    """Makes training raise after `steps` optimiser steps, as if the process were killed there."""
    original, calls = cls.after_step, {"n": 0}

    def after_step(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == steps:
            raise Killed

    monkeypatch.setattr(cls, "after_step", after_step)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(store, tmp_path, monkeypatch):
    from pipeline.coders.topk import TopKSAE

    data = _data(store)
    coder_cfg = AnyCoderConfig(kind="topk", n_features=32, k=4)
    cfg = TrainConfig(tokens=40 * 256, batch_size=256, checkpoint_every=15, log_every=7)
    disabled = TrackingConfig(mode="disabled")
    whole = train_run(coder_cfg, cfg, data, tmp_path / "whole", disabled, "w", "g")

    _kill_after(monkeypatch, TopKSAE, 33)
    with pytest.raises(Killed):
        train_run(coder_cfg, cfg, data, tmp_path / "killed", disabled, "k", "g")
    assert (tmp_path / "killed" / "checkpoint.safetensors").exists()
    monkeypatch.undo()
    resumed = train_run(coder_cfg, cfg, data, tmp_path / "killed", disabled, "k", "g")

    assert resumed["resumed_from_step"] == 30
    assert resumed["loss"] == whole["loss"] and resumed["dead_fraction"] == whole["dead_fraction"]
    a, b = load(tmp_path / "whole" / "coder"), load(tmp_path / "killed" / "coder")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not (tmp_path / "killed" / "checkpoint.safetensors").exists()


def test_a_checkpoint_of_another_configuration_is_refused(store, tmp_path, monkeypatch):
    from pipeline.coders.relu import ReluSAE

    data = _data(store)
    disabled = TrackingConfig(mode="disabled")
    _kill_after(monkeypatch, ReluSAE, 7)
    with pytest.raises(Killed):
        train_run(
            AnyCoderConfig(n_features=32),
            TrainConfig(tokens=5120, batch_size=256, checkpoint_every=5),
            data,
            tmp_path,
            disabled,
            "r",
            "g",
        )
    monkeypatch.undo()
    other = TrainConfig(tokens=5120, batch_size=256, checkpoint_every=5, lr=0.5)
    with pytest.raises(ConfigError, match="checkpoint of another configuration"):
        train_run(AnyCoderConfig(n_features=32), other, data, tmp_path, disabled, "r", "g")


def test_each_arm_of_a_fused_grid_equals_the_arm_trained_alone(store, tmp_path):
    data = _data(store)
    disabled = TrackingConfig(mode="disabled")
    arms = [
        (AnyCoderConfig(n_features=32), TrainConfig(tokens=30 * 256, batch_size=256, lr=1e-3)),
        (AnyCoderConfig(n_features=64, l1_coefficient=1.0), TrainConfig(tokens=12 * 256, batch_size=256, lr=3e-3)),
        (AnyCoderConfig(kind="topk", n_features=48, k=4), TrainConfig(tokens=20 * 256, batch_size=256, lr=2e-3)),
        (AnyCoderConfig(kind="jumprelu", n_features=32), TrainConfig(tokens=25 * 256, batch_size=256, lr=1e-3)),
    ]
    specs = [ArmSpec(c, t, tmp_path / f"grid{i}", f"a{i}", "g") for i, (c, t) in enumerate(arms)]
    fused = train_grid(specs, data, disabled)
    for i, (coder_cfg, train_cfg) in enumerate(arms):
        alone = train_run(coder_cfg, train_cfg, data, tmp_path / f"alone{i}", disabled, f"a{i}", "g")
        assert fused[i]["loss"] == alone["loss"] and fused[i]["steps"] == alone["steps"]
        a, b = load(tmp_path / f"grid{i}" / "coder"), load(tmp_path / f"alone{i}" / "coder")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_diverging_arm_stops_alone_in_its_grid(store, tmp_path):
    data = _data(store)
    good = ArmSpec(
        AnyCoderConfig(n_features=32), TrainConfig(tokens=5120, batch_size=256), tmp_path / "good", "good", "g"
    )
    bad_cfg = TrainConfig(tokens=5120, batch_size=256, lr=1e30, grad_clip=1e30, log_every=1)
    bad = ArmSpec(AnyCoderConfig(n_features=32), bad_cfg, tmp_path / "bad", "bad", "g")
    outcomes = train_grid([bad, good], data, TrackingConfig(mode="disabled"))
    assert isinstance(outcomes[0], TrainingDiverged) and outcomes[1]["steps"] == 20


def test_a_train_run_id_names_every_setting_that_changes_the_result_and_only_those():
    from pipeline.coders.registry import own_config
    from pipeline.layout import OutDir

    def run_id(coder=None, **train):
        coder = own_config(coder or AnyCoderConfig(n_features=32))
        return OutDir("d").train_run(coder, TrainConfig(**train)).id

    base = run_id()
    assert base.startswith("relu_N32_lr0.001_s0_")
    how = [{"device": "cuda"}, {"log_every": 1}, {"checkpoint_every": 7}, {"parallel": "ddp"}, {"stack_arms": False}]
    assert all(run_id(**fields) == base for fields in how)
    assert run_id(AnyCoderConfig(n_features=32, k=4)) == base  # a relu coder reads no k
    others = [
        run_id(AnyCoderConfig(n_features=32, l1_coefficient=1.0)),
        run_id(AnyCoderConfig(n_features=32, kind="topk")),
        run_id(tokens=5),
        run_id(eval_tokens=7),
        run_id(cache="none"),
        run_id(lr=0.01),
    ]
    assert len({base, *others}) == 7
