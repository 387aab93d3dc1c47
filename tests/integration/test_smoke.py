"""The smoke sweep end to end through the command line, as a user runs it."""

import json

import pandas as pd
import pytest
import zarr

from pipeline.cli import main
from pipeline.sweep.spec import load_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROW_COLUMNS = {
    "run_id",
    "status",
    "kind",
    "budget",
    "n_features",
    "lr",
    "tokens",
    "flops",
    "loss",
    "mse",
    "fvu",
    "l0",
    "dead_fraction",
}
LAW_KEYS = {"coefficient", "exponent", "ci95"}


def test_pipeline_run_smoke_writes_store_results_and_fit(ray_session, tmp_path, capsys):
    out = tmp_path / "smoke"
    args = [
        "run", f"out_dir={out}", "sweep=smoke", "harvest.n_tokens=20000", "tracking.mode=disabled",
        "fit.metrics=[explained_variance,cossim]",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "N*(C)" in printed and "report.md" in printed

    group = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert group.attrs["complete"] and group.attrs["model"]["d_model"] == 384
    assert group["tokens"].shape[1] == 128 and group["acts/resid_post.3"].shape[0] >= 20000

    spec = load_spec("smoke")
    table = pd.read_parquet(out / "sweep" / "results.parquet")
    assert ROW_COLUMNS <= set(table.columns)
    assert len(table) == len(spec.budgets) * len(spec.expansion) * len(spec.lrs)
    assert (table.status == "done").all() and (table.fvu < 1.5).all() and (table.flops <= table.budget).all()
    assert (table.explained_variance == 1 - table.fvu).all() and table.frac_alive.between(0, 1).all()
    assert (
        table[["explained_variance_legacy", "cossim", "l2_ratio", "average_max_decoder_cosine_sim"]].notna().all().all()
    )

    fit = json.loads((out / "fit" / "fit.json").read_text())
    assert len(fit["optima"]) == len(spec.budgets)
    assert {"budget", "n_features", "tokens", "lr", "loss"} <= set(fit["optima"][0])
    for law in ("n_opt", "tokens_opt", "lr_opt"):
        assert LAW_KEYS <= set(fit[law])
    assert fit["loss_frontier"]["power_law"]["exponent"] < 0
    assert set(fit["metric_laws"]) == {"explained_variance", "cossim"}
    assert "cannot_measure" in fit["dead_features"]  # the smoke runs are far shorter than the dead-feature window
    report = (out / "fit" / "report.md").read_text()
    for png in ("isoflop.png", "frontier.png", "optima.png"):
        assert (out / "fit" / png).stat().st_size > 0 and png in report

    # A second run finds everything done and changes no row.
    assert main(args) == 0
    assert "18 already finished, 0 to run" in capsys.readouterr().out
    assert pd.read_parquet(out / "sweep" / "results.parquet").equals(table)
