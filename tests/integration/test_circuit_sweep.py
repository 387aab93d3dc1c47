"""A sweep with `train.trace_prompts` on a tiny GPT-2 store: every CLT arm gets its circuit scores, the SAE arms
get none, and the fit reports the scores against compute."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FitConfig
from pipeline.fit import run_fit
from pipeline.sweep.stage import run_sweep

from conftest import compose, harvest_in_process, tiny_overrides

pytestmark = pytest.mark.slow

LAYERS = (0, 1, 2)
HOOKS = [f"{site}.{layer}" for layer in LAYERS for site in ("mlp_in", "mlp_out")]
SCORES = ("replacement_score", "completeness_score", "next_token_agreement")
PROMPTS = "[The cat sat on the,In the beginning was]"


def _sweep(folder, name: str, **fields) -> str:
    spec = {"budgets": [1e8, 3e8], "n_features": [48, 96], "lrs": [3e-3], "batch_size": 32, "repeat_data": True}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec | fields))  # JSON is valid YAML
    return str(path)


@pytest.fixture(scope="module")
def store_dir(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("circuits")
    extra = {"harvest.n_tokens": 1200, "harvest.contexts_per_shard": 20}
    harvest_in_process(tiny_models["gpt2"], root / "run", HOOKS, **extra)
    return root, tiny_overrides(tiny_models["gpt2"], root / "run", **extra) + [
        "train.eval_tokens=120", "train.splice_contexts=4", "train.device=cpu", f"train.trace_prompts={PROMPTS}",
    ]  # fmt: skip


def _run(root, overrides, name: str, sweep: str) -> pd.DataFrame:
    (root / name).mkdir()
    (root / name / "store.zarr").symlink_to(root / "run" / "store.zarr")
    return run_sweep(compose(*overrides, f"sweep={sweep}", f"out_dir={root / name}"))


def test_every_clt_arm_gets_its_circuit_scores_and_the_fit_reports_them(store_dir):
    root, overrides = store_dir
    # A small penalty: at these few steps a larger one leaves no feature active, and a graph with none cannot be traced.
    table = _run(root, overrides, "clt", _sweep(root, "clt", kind="clt", layers=list(LAYERS), sparsity=[0.1]))
    assert len(table) == 4 and (table.status == "done").all(), table.error.tolist()
    for name in SCORES:
        values = table[name].to_numpy(float)
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all(), (name, values)
    for run_id in table.run_id:
        metrics = json.loads((root / "clt" / "sweep" / "runs" / run_id / "metrics.json").read_text())
        assert all(0 <= metrics[name] <= 1 for name in SCORES)
    fit = run_fit(table, root / "clt" / "fit", FitConfig(n_bootstrap=0))
    on_disk = json.loads((root / "clt" / "fit" / "fit.json").read_text())
    points = on_disk["circuit_scores"]["kinds"]["clt"]["points"]
    assert [p["budget"] for p in points] == [1e8, 3e8]
    assert set(on_disk["metric_laws"]) == set(SCORES)  # fitted without fit.metrics asking
    assert "## Circuit quality in compute" in (root / "clt" / "fit" / "report.md").read_text()
    assert "circuit_scores.png" in fit["plots"] and (root / "clt" / "fit" / "circuit_scores.png").stat().st_size


def test_a_sweep_of_clts_and_per_layer_transcoders_compares_their_scores_at_equal_compute(store_dir):
    root, overrides = store_dir
    sweep = _sweep(root, "kinds", kinds=["clt", "plt"], layers=list(LAYERS), sparsity_by_kind={"clt": 0.1, "plt": 0.1},
                   n_features=[96])  # fmt: skip
    table = _run(root, overrides, "kinds", sweep)
    assert sorted(table.kind) == ["clt", "clt", "plt", "plt"] and (table.status == "done").all(), table.error.tolist()
    assert np.isfinite(table[list(SCORES)].to_numpy(float)).all()
    fit = run_fit(table, root / "kinds" / "fit", FitConfig(n_bootstrap=0))
    kinds = fit["circuit_scores"]["kinds"]
    assert sorted(kinds) == ["clt", "plt"] and all(len(k["points"]) == 2 for k in kinds.values())
    report = (root / "kinds" / "fit" / "report.md").read_text()
    assert "| budget C | clt | plt |" in report and (root / "kinds" / "fit" / "circuit_scores.png").exists()


def test_sae_arms_get_no_circuit_scores(store_dir):
    root, overrides = store_dir
    sweep = _sweep(root, "relu", kind="relu", n_features=[32], budgets=[1e8], sparsity=[5.0])
    table = _run(root, overrides + ["train.hook=mlp_in.1"], "relu", sweep)
    assert (table.status == "done").all() and table.fvu.notna().all()
    assert table[list(SCORES)].isna().all().all()


def test_the_train_stage_scores_a_transcoders_circuits(store_dir, capsys):
    from pipeline.cli import main

    root, overrides = store_dir
    (root / "one").mkdir()
    (root / "one" / "store.zarr").symlink_to(root / "run" / "store.zarr")
    arrays = ["coder=transcoder", "coder.n_features=64", "coder.l1_coefficient=0.1", "train.hook=mlp_in.1",
              "train.target_hook=mlp_out.1", "train.tokens=3200", "train.batch_size=32"]  # fmt: skip
    assert main(["train", *overrides, f"out_dir={root / 'one'}", *arrays]) == 0
    [metrics] = [json.loads(p.read_text()) for p in (root / "one" / "train").glob("*/metrics.json")]
    assert all(0 <= metrics[name] <= 1 for name in SCORES), {name: metrics[name] for name in SCORES}
