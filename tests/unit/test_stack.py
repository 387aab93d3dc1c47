"""Fused grids whose arms of one shape train as one stacked coder."""

from dataclasses import replace

import pytest
import torch

from pipeline.coders.registry import AnyCoderConfig, load
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.train.arm_run import ArmRun, ArmSpec, TrainingDiverged
from pipeline.train.stack import build_stacks, group_arms
from pipeline.train.trainer import train_grid, train_run

pytestmark = pytest.mark.usefixtures("one_thread")


DISABLED = TrackingConfig(mode="disabled")


def _specs(arms, folder, prefix="grid"):
    return [ArmSpec(c, t, folder / f"{prefix}{i}", f"a{i}", "g") for i, (c, t) in enumerate(arms)]


def _weights(folder):
    return load(folder / "coder").state_dict()


def _assert_close_runs(a: dict, b: dict, folder_a, folder_b, atol=1e-5):
    assert a["steps"] == b["steps"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for name, tensor in _weights(folder_a).items():
        torch.testing.assert_close(tensor, _weights(folder_b)[name], rtol=1e-4, atol=atol)


def test_arms_differing_only_in_rate_or_penalty_are_stacked(data, tmp_path):
    train = TrainConfig(tokens=20 * 256, batch_size=256, lr=1e-3)
    relu = AnyCoderConfig(n_features=32)
    arms = [
        (relu, train),
        (replace(relu, l1_coefficient=1.0), replace(train, lr=3e-3)),  # stacks with 0
        (replace(relu, n_features=64), train),  # another shape
        (relu, replace(train, tokens=30 * 256)),  # stops at another step
        (AnyCoderConfig(kind="topk", n_features=32, k=4), train),
        (AnyCoderConfig(kind="topk", n_features=32, k=4), replace(train, lr=3e-3)),  # stacks with 4
        (AnyCoderConfig(kind="topk", n_features=32, k=8), train),  # another k
        (AnyCoderConfig(kind="jumprelu", n_features=32), train),
        (
            AnyCoderConfig(kind="jumprelu", n_features=32, jumprelu_bandwidth=0.01),
            replace(train, lr=3e-3),
        ),  # another bandwidth
        (relu, replace(train, lr=3e-3, stack_arms=False)),  # stacking turned off
        (AnyCoderConfig(kind="batchtopk", n_features=32, k=4), train),
        (AnyCoderConfig(kind="batchtopk", n_features=32, k=4), replace(train, lr=3e-3)),  # stacks with 10
        (AnyCoderConfig(kind="batchtopk", n_features=32, k=4, aux_k=64), train),  # another aux_k
    ]
    runs = {i: ArmRun(spec, data, DISABLED) for i, spec in enumerate(_specs(arms, tmp_path))}
    groups = sorted(group_arms(runs))
    assert groups == [[0, 1], [2], [3], [4, 5], [6], [7], [8], [9], [10, 11], [12]]
    stacked = sorted(sorted(s.arms) for s in build_stacks(runs) if s.coder is not None)
    assert stacked == [[0, 1], [4, 5], [10, 11]]  # each group's stack was built, not trained arm by arm


def test_stacked_clipping_and_adam_equal_each_arms_own():
    from types import SimpleNamespace

    from pipeline.train.optimizer import adam
    from pipeline.train.stack import _adam_step, _clip_divisors

    torch.manual_seed(0)
    lrs = [1e-3, 3e-2]
    stacked = [torch.randn(len(lrs), 6, 4), torch.randn(len(lrs), 4)]
    # Each arm as torch trains it alone: its own parameters, clip_grad_norm_ and the unfused Adam.
    own = [[torch.nn.Parameter(p[a].clone()) for p in stacked] for a in range(len(lrs))]
    alone = [torch.optim.Adam(params, lr=lr, fused=False) for params, lr in zip(own, lrs)]
    # Each arm as a stack holds it: parameters that are views of the stacked tensors.
    views = [[torch.nn.Parameter(p[a]) for p in stacked] for a in range(len(lrs))]
    arms = [(a, SimpleNamespace(optimizer=adam(params, lr))) for a, (params, lr) in enumerate(zip(views, lrs))]
    for step in range(4):
        grads = [torch.randn_like(p) * 10 ** (step - 1) for p in stacked]  # clipping bites from the second step on
        for a, (params, optimizer) in enumerate(zip(own, alone)):
            for p, g in zip(params, grads):
                p.grad = g[a].clone()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        _adam_step(arms, grads, _clip_divisors(grads, 1.0))
        for a in range(len(lrs)):
            for p, q in zip(own[a], views[a]):
                torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    state = arms[1][1].optimizer.state_dict()["state"][0]
    torch.testing.assert_close(state["exp_avg"], alone[1].state_dict()["state"][0]["exp_avg"])
    assert state["step"] == 4


def test_a_diverging_arm_leaves_its_stack_and_the_others_train_on(data, tmp_path):
    train = TrainConfig(tokens=20 * 256, batch_size=256, lr=1e-3, grad_clip=1e30, log_every=1)
    arms = [
        (AnyCoderConfig(n_features=32), replace(train, lr=1e30)),
        (AnyCoderConfig(n_features=32), train),
        (AnyCoderConfig(n_features=32), replace(train, lr=3e-3)),
    ]
    fused = train_grid(_specs(arms, tmp_path), data, DISABLED)
    assert isinstance(fused[0], TrainingDiverged) and not (tmp_path / "grid0" / "metrics.json").exists()
    for i in (1, 2):
        alone = train_run(*arms[i], data, tmp_path / f"alone{i}", DISABLED, f"a{i}", "g")
        _assert_close_runs(fused[i], alone, tmp_path / f"grid{i}", tmp_path / f"alone{i}")


def test_without_memory_for_a_smaller_stack_the_remaining_arms_train_on_their_own(data, tmp_path, monkeypatch):
    from pipeline.train.stack import ArmStack

    original, calls = ArmStack._stacked, {"n": 0}

    def stacked(self):
        calls["n"] += 1
        if calls["n"] > 1:  # the first stack is built; the one after arm 0 diverges is not
            raise torch.OutOfMemoryError("no memory for the copy")
        return original(self)

    monkeypatch.setattr(ArmStack, "_stacked", stacked)
    train = TrainConfig(tokens=20 * 256, batch_size=256, lr=1e-3, grad_clip=1e30, log_every=1)
    arms = [
        (AnyCoderConfig(n_features=32), replace(train, lr=1e30)),
        (AnyCoderConfig(n_features=32), train),
        (AnyCoderConfig(n_features=32), replace(train, lr=3e-3)),
    ]
    fused = train_grid(_specs(arms, tmp_path), data, DISABLED)
    monkeypatch.undo()
    assert calls["n"] == 2 and isinstance(fused[0], TrainingDiverged)
    for i in (1, 2):
        alone = train_run(*arms[i], data, tmp_path / f"alone{i}", DISABLED, f"a{i}", "g")
        _assert_close_runs(fused[i], alone, tmp_path / f"grid{i}", tmp_path / f"alone{i}")


def test_a_grid_whose_arms_all_stopped_reads_no_more_batches(data, tmp_path):
    class Counted:
        def __init__(self, data):
            self.data, self.drawn = data, 0

        def __getattr__(self, name):
            return getattr(self.data, name)

        def batches(self, *args):
            for batch in self.data.batches(*args):
                self.drawn += 1
                yield batch

    counted = Counted(data)
    train = TrainConfig(tokens=20 * 256, batch_size=256, lr=1e30, grad_clip=1e30, log_every=1)
    fused = train_grid(_specs([(AnyCoderConfig(n_features=32), train)] * 2, tmp_path), counted, DISABLED)
    assert all(isinstance(outcome, TrainingDiverged) for outcome in fused)
    assert counted.drawn < 20


def test_the_last_arm_of_a_stack_trains_on_alone_in_memory_of_its_own(data, tmp_path):
    train = TrainConfig(tokens=20 * 256, batch_size=256, lr=1e-3, grad_clip=1e30, log_every=1)
    arms = [(AnyCoderConfig(n_features=32), replace(train, lr=1e30)), (AnyCoderConfig(n_features=32), train)]
    runs = {i: ArmRun(spec, data, DISABLED) for i, spec in enumerate(_specs(arms, tmp_path))}
    [stack] = build_stacks(runs)
    steps = iter(range(20))
    for step, x in zip(steps, data.batches(256, 20, 0)):
        if stack.step(x, step):
            break
    assert list(stack.arms) == [1] and stack.coder is None
    lone = stack.arms[1].coder.w_enc
    assert lone.untyped_storage().nbytes() == lone.numel() * lone.element_size()  # no longer a view of the stack
    assert runs[0].coder is None  # the failed arm let go of its state


def test_a_failure_of_a_stacks_shared_step_stops_its_arms_and_not_the_grid(data, tmp_path, monkeypatch):
    from pipeline.coders.relu import ReluSAE

    original = ReluSAE.loss

    def loss(self, x, *args, **kwargs):
        if self.w_enc.dim() == 3:
            raise RuntimeError("out of memory")
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(ReluSAE, "loss", loss)
    train = TrainConfig(tokens=10 * 256, batch_size=256, lr=1e-3)
    arms = [
        (AnyCoderConfig(n_features=32), train),
        (AnyCoderConfig(n_features=32), replace(train, lr=3e-3)),
        (AnyCoderConfig(n_features=64), train),
    ]
    outcomes = train_grid(_specs(arms, tmp_path), data, DISABLED)
    assert [type(o).__name__ for o in outcomes[:2]] == ["RuntimeError", "RuntimeError"]
    assert outcomes[2]["steps"] == 10


class Killed(BaseException):  # like a signal: not an arm's failure, it stops the whole process
    pass


def test_a_killed_stack_resumes_from_its_arms_checkpoints_to_the_same_weights(data, tmp_path, monkeypatch):
    from pipeline.coders.topk import TopKSAE

    train = TrainConfig(tokens=40 * 256, batch_size=256, checkpoint_every=15, log_every=7)
    arms = [(AnyCoderConfig(kind="topk", n_features=32, k=4), replace(train, lr=lr)) for lr in (1e-3, 4e-3)]
    whole = train_grid(_specs(arms, tmp_path, "whole"), data, DISABLED)

    original, calls = TopKSAE.after_step, {"n": 0}

    def after_step(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 33:  # once per step, for the whole stack: past step 30's checkpoint
            raise Killed

    monkeypatch.setattr(TopKSAE, "after_step", after_step)
    with pytest.raises(Killed):
        train_grid(_specs(arms, tmp_path, "killed"), data, DISABLED)
    monkeypatch.undo()
    assert all((tmp_path / f"killed{i}" / "checkpoint.safetensors").exists() for i in range(2))
    resumed = train_grid(_specs(arms, tmp_path, "killed"), data, DISABLED)
    for i in range(2):
        assert resumed[i]["resumed_from_step"] == 30 and resumed[i]["loss"] == whole[i]["loss"]
        a, b = _weights(tmp_path / f"whole{i}"), _weights(tmp_path / f"killed{i}")
        assert all(torch.equal(a[name], b[name]) for name in a)
