"""Training over two ranks (gloo on CPU): ddp and feature-sharded runs equal one process, through
spawned ranks, torchrun and Ray Train; sharded checkpoints resume on another number of ranks."""

import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, load
from pipeline.coders.topk import TopKSAE
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.distributed.process_group import process_group
from pipeline.store.activation_store import ActivationStore
from pipeline.train import checkpoint
from pipeline.train.trainer import train_run

DISABLED = TrackingConfig(mode="disabled")


STEPS, BATCH = 12, 256


def _train(parallel: str, **fields) -> TrainConfig:
    base = {"tokens": STEPS * BATCH, "batch_size": BATCH, "lr": 3e-3, "eval_tokens": 512, "log_every": 1}
    return TrainConfig(**(base | fields | {"parallel": parallel}))


RUNS = {
    "ddp-relu": (AnyCoderConfig(n_features=32, l1_coefficient=1.0), "ddp", {"grad_clip": 0.5}),
    "ddp-topk": (AnyCoderConfig(kind="topk", n_features=32, k=4), "ddp", {}),
    "features-relu": (AnyCoderConfig(n_features=32, l1_coefficient=1.0), "features", {"grad_clip": 0.5}),
    "features-topk": (
        AnyCoderConfig(kind="topk", n_features=48, k=2, aux_k=8, dead_tokens_threshold=256),
        "features",
        {},
    ),  # AuxK on
    "features-jumprelu": (AnyCoderConfig(kind="jumprelu", n_features=32, preact_coefficient=0.1), "features", {}),
    "features-jumprelu-l0": (AnyCoderConfig(kind="jumprelu", n_features=32, jumprelu_penalty="l0"), "features", {}),
    "features-batchtopk": (AnyCoderConfig(kind="batchtopk", n_features=32, k=4), "features", {}),
    "features-batchtopk-held-out": (
        AnyCoderConfig(kind="batchtopk", n_features=32, k=4, threshold_calibration="held_out"),
        "features",
        {},
    ),  # the threshold chosen among both ranks' held-out activations
    "features-jumprelu-quadratic": (
        AnyCoderConfig(kind="jumprelu", n_features=32, jumprelu_penalty="quadratic", target_l0=4.0),
        "features",
        {},
    ),
    # train.center: each rank folds the mean into its coder, or its slice of one
    "ddp-relu-centred": (AnyCoderConfig(n_features=32, l1_coefficient=1.0), "ddp", {"center": True}),
    "features-topk-centred": (AnyCoderConfig(kind="topk", n_features=32, k=4), "features", {"center": True}),
    "features-relu-centred": (AnyCoderConfig(n_features=32, l1_coefficient=1.0), "features", {"center": True}),
}
CORE = ("explained_variance_legacy", "cossim", "l2_ratio", "relative_reconstruction_bias", "frac_alive")


RESUMED = (AnyCoderConfig(kind="topk", n_features=30, k=4), {"checkpoint_every": 5})  # 30 features: 15 a rank, then 30


def _data(store_path: Path) -> ActivationData:
    return ActivationData(
        ActivationStore(store_path), "resid_post.0", TrainConfig(eval_tokens=512), torch.device("cpu")
    )


class Killed(Exception):
    pass


@contextmanager
def _killed_after(steps: int):
    """Training raises after `steps` optimiser steps, as if the process were killed there."""
    original, calls = TopKSAE.after_step, {"n": 0}

    def after_step(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == steps:
            raise Killed

    TopKSAE.after_step = after_step
    try:
        yield
    finally:
        TopKSAE.after_step = original


def _resumable(parallel: str) -> tuple[AnyCoderConfig, TrainConfig]:
    coder, fields = RESUMED
    return coder, _train(parallel, **fields)


def _rank(rank: int, size: int, port: int, job, args: tuple) -> None:
    """One rank started as torchrun starts it: the rendezvous in environment variables."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    with process_group(torch.device("cpu")):
        job(*args)


def _spawn(job, *args, size: int = 2) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_rank, args=(size, port, job, args), nprocs=size, start_method="spawn")


def _two_rank_job(store_path: Path, root: Path) -> None:
    data = _data(store_path)
    for name, (coder, parallel, fields) in RUNS.items():
        train_run(coder, _train(parallel, **fields), data, root / name, DISABLED, name, "g")
    with _killed_after(7):
        try:
            train_run(*_resumable("features"), data, root / "two-to-one", DISABLED, "r", "g")
        except Killed:
            pass
    train_run(*_resumable("features"), data, root / "one-to-two", DISABLED, "r", "g")


@pytest.fixture(scope="module")
def two_ranks(synthetic_store, tmp_path_factory) -> Path:
    """Every run of RUNS trained on two ranks; a sharded run killed at step 7 (checkpoint of step 5);
    and a run killed on one rank, then resumed on two."""
    root = tmp_path_factory.mktemp("two_ranks")
    with _killed_after(7), pytest.raises(Killed):
        train_run(*_resumable("features"), _data(synthetic_store.path), root / "one-to-two", DISABLED, "r", "g")
    _spawn(_two_rank_job, synthetic_store.path, root)
    shutil.copytree(root / "two-to-one", root / "two-to-plain")
    return root


@pytest.fixture(scope="module")
def one_process(synthetic_store, tmp_path_factory):
    """The same runs in one process, each trained once when a test first asks for it."""
    root, done = tmp_path_factory.mktemp("one_process"), {}

    def run(coder: AnyCoderConfig, cfg: TrainConfig, name: str) -> tuple[dict, Path]:
        if name not in done:
            done[name] = train_run(coder, cfg, _data(synthetic_store.path), root / name, DISABLED, name, "g")
        return done[name], root / name

    return run


def _assert_same_coder(a: Path, b: Path) -> None:
    x, y = load(a).state_dict(), load(b).state_dict()
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(x[name], y[name], rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.cluster
@pytest.mark.parametrize("name", list(RUNS))
def test_a_two_rank_run_equals_one_process(name, two_ranks, one_process):
    coder, _, fields = RUNS[name]
    alone, alone_dir = one_process(coder, _train("none", **fields), name)
    metrics = json.loads((two_ranks / name / "metrics.json").read_text())
    for key in ("loss", "mse", "fvu", "l0", *CORE, "average_max_decoder_cosine_sim", "max_decoder_cosine_sim"):
        assert metrics[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    assert metrics["dead_fraction"] == alone["dead_fraction"] and metrics["flops"] == alone["flops"]
    assert metrics["density_histogram"] == alone["density_histogram"]
    _assert_same_coder(two_ranks / name / "coder", alone_dir / "coder")


@pytest.mark.cluster
def test_only_the_main_rank_writes_the_run_folder(two_ranks):
    assert sorted(p.name for p in (two_ranks / "features-relu").iterdir()) == ["coder", "metrics.json"]


@pytest.mark.cluster
def test_a_sharded_checkpoint_holds_a_slice_per_rank_and_an_index(two_ranks):
    [step] = (two_ranks / "two-to-plain" / checkpoint.SHARDED).iterdir()
    index = json.loads((step / checkpoint.INDEX).read_text())
    assert step.name == "step-000000005" and index["meta"]["step"] == 5
    assert [s["range"] for s in index["shards"]] == [[0, 15], [15, 30]]
    assert all((step / s["file"]).exists() for s in index["shards"])
    assert index["feature_dims"]["coder.w_dec"] == 1 and index["feature_dims"]["coder.b_dec"] is None
    assert index["feature_dims"]["optim.0.exp_avg"] is not None and index["feature_dims"]["firing.last_fired"] == 0


@pytest.mark.cluster
def test_a_two_rank_checkpoint_loads_in_one_process_as_an_ordinary_coder(
    two_ranks, one_process, synthetic_store, tmp_path
):
    coder_cfg, cfg = _resumable("none")
    with _killed_after(7), pytest.raises(Killed):
        train_run(coder_cfg, cfg, _data(synthetic_store.path), tmp_path, DISABLED, "r", "g")
    from safetensors.torch import load_file

    plain = {
        k.removeprefix("coder."): v for k, v in load_file(tmp_path / checkpoint.FILE).items() if k.startswith("coder.")
    }
    whole = checkpoint.load_coder(two_ranks / "two-to-plain")
    assert isinstance(whole, TopKSAE) and whole.n_features == 30
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(tensor, plain[name], rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.cluster
def test_a_two_rank_checkpoint_resumes_on_one_rank(two_ranks, one_process, synthetic_store):
    resumed = train_run(
        *_resumable("features"), _data(synthetic_store.path), two_ranks / "two-to-one", DISABLED, "r", "g"
    )
    alone, alone_dir = one_process(*_resumable("none"), "resumable")
    assert resumed["resumed_from_step"] == 5
    assert resumed["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    _assert_same_coder(two_ranks / "two-to-one" / "coder", alone_dir / "coder")
    assert not (two_ranks / "two-to-one" / checkpoint.SHARDED).exists()


@pytest.mark.cluster
def test_a_one_rank_checkpoint_resumes_on_two_ranks(two_ranks, one_process):
    metrics = json.loads((two_ranks / "one-to-two" / "metrics.json").read_text())
    alone, alone_dir = one_process(*_resumable("none"), "resumable")
    assert metrics["resumed_from_step"] == 5
    assert metrics["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    _assert_same_coder(two_ranks / "one-to-two" / "coder", alone_dir / "coder")


STAGE = {"coder.n_features": 32, "coder.l1_coefficient": 1.0, "train.tokens": STEPS * BATCH, "train.batch_size": BATCH,
         "train.lr": 0.003, "train.eval_tokens": 512, "train.splice_contexts": 0, "train.device": "cpu",
         "model.name": "synthetic", "tracking.mode": "disabled"}  # fmt: skip


STAGE_RUN = "relu_N32_lr0.003_s0_"  # and the hash of the run's configuration


def _stage_run(out_dir: Path) -> Path:
    """The one run folder the train stage wrote."""
    [run] = (out_dir / "train").iterdir()
    assert run.name.startswith(STAGE_RUN), run.name
    return run


def _stage_dir(synthetic_store, folder: Path) -> Path:
    """An out_dir whose store.zarr is the synthetic store."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "store.zarr").symlink_to(synthetic_store.path)
    return folder


def _overrides(out_dir: Path, parallel: str) -> list[str]:
    return [f"{k}={v}" for k, v in (STAGE | {"out_dir": out_dir, "train.parallel": parallel}).items()]


@pytest.mark.cluster
def test_torchrun_trains_the_stage_on_two_ranks_as_one_process(synthetic_store, one_process, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = _stage_dir(synthetic_store, tmp_path / "out")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
    ]
    done = subprocess.run(
        [*launcher, "-m", "pipeline", "train", *_overrides(out_dir, "features")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"train {_stage_run(out_dir).name}: loss") == 1  # only rank 0 reports
    alone, alone_dir = one_process(
        AnyCoderConfig(n_features=32, l1_coefficient=1.0), _train("none", log_every=50), "stage"
    )
    metrics = json.loads((_stage_run(out_dir) / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    _assert_same_coder(_stage_run(out_dir) / "coder", alone_dir / "coder")


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_runs_the_same_stage_on_two_workers(ray_session, synthetic_store, one_process, tmp_path):
    from pipeline.distributed.ray_train import run_on_ranks
    from pipeline.stages import train_on_rank

    from conftest import compose

    out_dir = _stage_dir(synthetic_store, tmp_path / "out")
    cfg = compose(*_overrides(out_dir, "ddp"))
    run_on_ranks(train_on_rank, (cfg,), num_workers=2, use_gpu=False, ray=cfg.ray, out_dir=cfg.out_dir, name="t")
    alone, alone_dir = one_process(
        AnyCoderConfig(n_features=32, l1_coefficient=1.0), _train("none", log_every=50), "stage"
    )
    metrics = json.loads((_stage_run(out_dir) / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    _assert_same_coder(_stage_run(out_dir) / "coder", alone_dir / "coder")


def test_ray_train_runs_a_sweep_pack_on_two_workers_and_returns_rank_0s_rows(
    ray_session, synthetic_store, one_process, tmp_path
):
    from pipeline.distributed.ray_train import run_on_ranks
    from pipeline.sweep.arm import run_arms_on_rank
    from pipeline.sweep.configs import arm_config
    from pipeline.sweep.plan import Arm

    from conftest import compose

    out_dir = _stage_dir(synthetic_store, tmp_path / "out")
    cfg = compose(*_overrides(out_dir, "ddp"))
    shape = {"kind": "relu", "budget": 0.0, "n_features": 32, "d_in": 16, "sparsity": 1.0, "seed": 0}
    steps = {"batch_size": BATCH, "steps": STEPS, "tokens": STEPS * BATCH, "flops": 0.0}
    arms = [Arm(f"a{i}", lr=lr, **shape, **steps) for i, lr in enumerate((3e-3, 1e-3))]
    pack = (arms, [arm_config(cfg, a) for a in arms], "resid_post.0", out_dir / "sweep", "g")
    rows = run_on_ranks(run_arms_on_rank, pack, num_workers=2, use_gpu=False, ray=cfg.ray, out_dir=out_dir, name="p")
    assert [(r["run_id"], r["status"]) for r in rows] == [("a0", "done"), ("a1", "done")], rows[0]["error"]
    alone, alone_dir = one_process(
        AnyCoderConfig(n_features=32, l1_coefficient=1.0), _train("none", log_every=50), "stage"
    )
    assert rows[0]["loss"] == pytest.approx(alone["loss"], rel=1e-4)
    run = out_dir / "sweep" / "runs" / "a0"
    _assert_same_coder(run / "coder", alone_dir / "coder")
    assert sorted(p.name for p in run.iterdir()) == ["coder", "metrics.json", "result.json"]  # rank 0's only
