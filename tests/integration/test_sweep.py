import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.harvest.stage import run_harvest
from pipeline.sweep.results import COLUMNS
from pipeline.sweep.stage import run_sweep

from conftest import compose, tiny_overrides


def _write_sweep(folder, **fields) -> str:
    spec = {
        "kind": "relu",
        "budgets": [2e7, 6e7],
        "n_features": [16, 32],
        "lrs": [1e-3, 3e-3],
        "batch_size": 32,
        **fields,
    }
    spec = {k: v for k, v in spec.items() if v is not None}  # None leaves a default field out
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(spec))  # JSON is valid YAML
    return str(path)


@pytest.fixture(scope="module")
def harvested(ray_session, tiny_models, tmp_path_factory):
    """A store of the tiny GPT-2 big enough for a few short arms."""
    root = tmp_path_factory.mktemp("sweep")
    overrides = tiny_overrides(
        tiny_models["gpt2"], root / "run", **{"harvest.n_tokens": 2400, "harvest.contexts_per_shard": 40}
    )
    run_harvest(compose(*overrides))
    return root, overrides + ["train.eval_tokens=256"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_local_sweep_writes_plan_and_one_done_row_per_arm_and_skips_them_next_time(harvested, capsys):
    root, overrides = harvested
    cfg = compose(*overrides, f"sweep={_write_sweep(root)}", f"out_dir={root / 'local'}")
    (root / "local").mkdir()
    (root / "local" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    table = run_sweep(cfg)
    plan_json = json.loads((root / "local" / "sweep" / "plan.json").read_text())
    assert len(plan_json["arms"]) == 8 and plan_json["hook"] == "resid_post.1"
    on_disk = pd.read_parquet(root / "local" / "sweep" / "results.parquet")
    assert list(on_disk.columns) == list(COLUMNS)
    assert len(on_disk) == 8 and (on_disk.status == "done").all()
    assert (on_disk.flops <= on_disk.budget).all() and (on_disk.fvu > 0).all()
    assert (on_disk.kl > 0).all() and on_disk.delta_loss.notna().all()  # GPT-2 has an LM head to splice into
    assert set(on_disk.run_id) == {a["run_id"] for a in plan_json["arms"]}
    assert len(table) == 8
    capsys.readouterr()
    run_sweep(cfg)
    assert "8 already finished, 0 to run" in capsys.readouterr().out
    assert len(pd.read_parquet(root / "local" / "sweep" / "results.parquet")) == 8


@pytest.mark.ray
def test_a_failing_arm_is_recorded_and_the_others_finish(harvested):
    root, overrides = harvested
    # lr 1e30 diverges for real; the other learning rate trains normally.
    cfg = compose(
        *overrides, f"sweep={_write_sweep(root, lrs=[1e-3, 1e30])}", "train.grad_clip=1e30", "train.log_every=1"
    )
    cfg.out_dir = str(root / "run")
    table = run_sweep(cfg)
    failed = table[table.status == "failed"]
    assert len(failed) == 4 and (table[table.lr == 1e-3].status == "done").all()
    assert failed.error.str.contains("TrainingDiverged").all()
    again = run_sweep(cfg)  # max_retries=1: failed arms are tried once more, then left alone
    assert (again[again.status == "failed"].attempts == 2).all()
    third = run_sweep(cfg)
    assert (third[third.status == "failed"].attempts == 2).all()


@pytest.mark.slow
@pytest.mark.ray
def test_the_ray_launcher_runs_packs_as_tasks(harvested):
    root, overrides = harvested
    sweep = _write_sweep(root, budgets=[2e7], lrs=[1e-3, 3e-3])
    cfg = compose(*overrides, f"sweep={sweep}", "launcher=ray", "sweep.pack=2", f"out_dir={root / 'ray'}")
    (root / "ray").mkdir()
    (root / "ray" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    table = run_sweep(cfg)
    assert len(table) == 4 and (table.status == "done").all()
    # Hydra recorded one job per pack of 2, each composed from the sweep's overrides and its own arms.
    jobs = sorted((root / "ray" / "sweep" / "jobs").glob("*/.hydra/overrides.yaml"))
    arms = [yaml.safe_load(p.read_text())[-1] for p in jobs]
    assert len(jobs) == 2 and all(a.startswith("sweep.arms=[") and a.count(",") == 1 for a in arms)


@pytest.mark.ray
def test_a_topk_sweep_trains_each_k(harvested):
    root, overrides = harvested
    sweep = _write_sweep(root, kind="topk", sparsity=[2, 4], budgets=[2e7], n_features=[32], lrs=[1e-3])
    cfg = compose(*overrides, f"sweep={sweep}", f"out_dir={root / 'topk'}")
    (root / "topk").mkdir()
    (root / "topk" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    table = run_sweep(cfg).sort_values("sparsity")
    assert list(table.sparsity) == [2.0, 4.0] and (table.status == "done").all()
    assert (table.l0 <= table.sparsity + 1e-6).all()


@pytest.mark.ray
def test_a_dry_run_plans_without_launching(harvested, capsys):
    root, overrides = harvested
    cfg = compose(*overrides, f"sweep={_write_sweep(root)}", "dry_run=true", f"out_dir={root / 'dry'}")
    (root / "dry").mkdir()
    (root / "dry" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    assert run_sweep(cfg) is None
    out = capsys.readouterr().out
    assert "relu_C2e+07_N16_lr0.001_l1-5_s0" in out and "dry run" in out
    assert (root / "dry" / "sweep" / "plan.json").exists()
    assert not (root / "dry" / "sweep" / "runs").exists()


@pytest.mark.slow
@pytest.mark.cluster
def test_a_sweep_killed_midway_and_run_again_ends_with_one_done_row_per_arm(synthetic_store, tmp_path):
    out = tmp_path / "killed"
    (out / "sweep").mkdir(parents=True)
    (out / "store.zarr").symlink_to(synthetic_store.path)
    # Two arms of some tens of steps, one per job: the kill lands after the first arm, before the second ends.
    sweep = _write_sweep(tmp_path, budgets=[6e7], n_features=[32, 64], lrs=[1e-3], batch_size=256)
    args = [
        sys.executable, "-m", "pipeline", "sweep", f"out_dir={out}", f"sweep={sweep}", "model.name=synthetic",
        "tracking.mode=disabled", "sweep.pack=1", "train.eval_tokens=512", "train.checkpoint_every=10",
    ]  # fmt: skip
    results = out / "sweep" / "runs"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(results.glob("*/result.json")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finished = list(results.glob("*/result.json"))
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert len(finished) == 1 and not (out / "sweep" / "results.parquet").exists()

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 already finished, 1 to run" in again.stdout
    table = pd.read_parquet(out / "sweep" / "results.parquet")
    planned = {a["run_id"] for a in json.loads((out / "sweep" / "plan.json").read_text())["arms"]}
    assert sorted(table.run_id) == sorted(planned) and len(planned) == 2
    assert (table.status == "done").all() and (table.attempts == 1).all()


def test_sweep_arms_runs_only_the_named_arms(synthetic_store, tmp_path):
    (tmp_path / "store.zarr").symlink_to(synthetic_store.path)
    sweep = _write_sweep(tmp_path, budgets=[2e7], n_features=[16, 32], lrs=[1e-3], batch_size=256)
    base = [
        f"out_dir={tmp_path}",
        f"sweep={sweep}",
        "model.name=synthetic",
        "train.eval_tokens=512",
        "tracking.mode=disabled",
    ]
    with pytest.raises(ConfigError, match="sweep.arms: nope is not an arm of sweep tiny"):
        run_sweep(compose(*base, "sweep.arms=[nope]"))
    table = run_sweep(compose(*base, "sweep.arms=[relu_C2e+07_N32_lr0.001_l1-5_s0]"))
    assert list(table.run_id) == ["relu_C2e+07_N32_lr0.001_l1-5_s0"] and (table.status == "done").all()


def test_a_sweep_whose_kind_its_parallel_mode_cannot_train_is_refused_before_any_work(harvested):
    root, overrides = harvested
    sweep = _write_sweep(root, kind="batchtopk", sparsity=[4])
    cfg = compose(*overrides, f"sweep={sweep}", "train.parallel=ddp", f"out_dir={root / 'ddp'}")
    (root / "ddp").mkdir()
    (root / "ddp" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    with pytest.raises(ConfigError, match=r"^train.parallel: ddp cannot train batchtopk"):
        run_sweep(cfg)
    assert sorted(p.name for p in (root / "ddp").iterdir()) == ["store.zarr"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_sweep_of_two_kinds_trains_each_at_the_target_l0_and_its_fit_compares_them(harvested, capsys):
    from pipeline.stages import fit

    root, overrides = harvested
    sweep = _write_sweep(root, kind=None, kinds=["relu", "topk"], target_l0=4, sparsity_by_kind={"relu": 5.0},
                         seeds=[0, 1], lrs=[1e-3])  # fmt: skip
    cfg = compose(*overrides, f"sweep={sweep}", f"out_dir={root / 'kinds'}", "fit.n_bootstrap=50")
    (root / "kinds").mkdir()
    (root / "kinds" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    table = run_sweep(cfg)
    assert len(table) == 2 * 2 * 2 * 2 and (table.status == "done").all()
    assert set(table[table.kind == "topk"].sparsity) == {4.0} and set(table[table.kind == "relu"].sparsity) == {5.0}
    assert (table[table.kind == "topk"].l0 <= 4 + 1e-6).all()
    capsys.readouterr()
    result = fit(cfg)
    assert "kinds compared on fvu" in capsys.readouterr().out
    kinds = result["kinds"]
    assert set(kinds["kinds"]) == {"relu", "topk"}
    for k in kinds["kinds"].values():
        assert k["n_runs"] == 8 and k["n_budgets"] == 2 and k["frontier"] is not None
        assert [s["n_seeds"] for s in k["seed_spread"]] == [2, 2]
        assert all(0 < o["loss"] < 1.5 for o in k["optima"])  # FVU
    assert kinds["reference_budget"] == 6e7 and set(kinds["compute_for_reference"]) == {"relu", "topk"}
    fit_dir = root / "kinds" / "fit"
    assert json.loads((fit_dir / "fit.json").read_text())["kinds"]["metric"] == "fvu"
    report = (fit_dir / "report.md").read_text()
    assert "## Kinds at equal compute" in report and "## Seed-to-seed spread of the optima" in report
    for png in ("kinds_frontier.png", "kinds_l0_ev.png"):
        assert (fit_dir / png).stat().st_size > 0 and png in report
