"""Circuit scores in the fit: their laws in compute per kind, the report's comparison at equal compute and its plot."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FitConfig
from pipeline.fit import run_fit, summary_table

from unit.test_fit_kinds import BUDGETS, kind_sweep

FIT = FitConfig(n_bootstrap=0, seed=0)
# Each kind's replacement score is coefficient * C**exponent on every one of its arms, so the law is exact.
REPLACEMENT = {"clt": (0.2, 0.04), "plt": (0.1, 0.05), "transcoder": (0.1, 0.05)}


def scored_sweep(kind: str, seed: int) -> pd.DataFrame:
    table = kind_sweep(kind, seed=seed)
    coefficient, exponent = REPLACEMENT[kind]
    return table.assign(
        replacement_score=coefficient * table["budget"] ** exponent,
        completeness_score=0.5 * (table["budget"] / 1e12) ** 0.01,
        next_token_agreement=1.0,  # the same at every budget: nothing to fit
    )


def unscored_sweep() -> pd.DataFrame:
    """An SAE kind: its rows hold NaN scores, as the sweep writes them."""
    table = kind_sweep("relu", seed=3)
    return table.assign(replacement_score=np.nan, completeness_score=np.nan, next_token_agreement=np.nan)


@pytest.mark.parametrize("partner", ["plt", "transcoder"])
def test_each_kind_gets_its_best_arms_scores_and_their_laws(partner, tmp_path):
    table = pd.concat([scored_sweep("clt", 1), scored_sweep(partner, 2), unscored_sweep()], ignore_index=True)
    fit = run_fit(table, tmp_path, FIT)
    section = json.loads((tmp_path / "fit.json").read_text())["circuit_scores"]
    assert section["metrics"] == ["replacement_score", "completeness_score", "next_token_agreement"]
    assert sorted(section["kinds"]) == sorted(["clt", partner])  # relu has no scores and is left out
    for kind, (coefficient, exponent) in (("clt", REPLACEMENT["clt"]), (partner, REPLACEMENT[partner])):
        k = section["kinds"][kind]
        assert [p["budget"] for p in k["points"]] == pytest.approx(BUDGETS)
        rows = table[table.kind == kind]
        for p in k["points"]:  # each budget's lowest-loss arm of the kind
            best = rows[rows.budget == p["budget"]].sort_values("loss").iloc[0]
            assert p["run_id"] == best.run_id and p["replacement_score"] == pytest.approx(best.replacement_score)
        law = k["laws"]["replacement_score"]
        assert law["exponent"] == pytest.approx(exponent, abs=1e-9)
        assert law["coefficient"] == pytest.approx(coefficient, rel=1e-6)
        assert k["laws"]["completeness_score"]["exponent"] == pytest.approx(0.01, abs=1e-9)
        assert "nothing varies" in k["laws"]["next_token_agreement"]["cannot_measure"]
    report = (tmp_path / "report.md").read_text()
    assert "## Circuit quality in compute" in report and "![Replacement score against compute" in report
    clt_first = REPLACEMENT["clt"][0] * BUDGETS[0] ** REPLACEMENT["clt"][1]
    partner_first = REPLACEMENT[partner][0] * BUDGETS[0] ** REPLACEMENT[partner][1]
    assert f"| {BUDGETS[0]:.3g} | {clt_first:.4f} | {partner_first:.4f} |" in report
    assert "| clt | next_token_agreement | - | - | cannot measure: next_token_agreement is 1" in report
    assert "circuit_scores.png" in fit["plots"]
    assert (tmp_path / "circuit_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clt_last = REPLACEMENT["clt"][0] * BUDGETS[-1] ** REPLACEMENT["clt"][1]
    assert f"clt          {clt_last:.4f} at C={BUDGETS[-1]:.3g}; C^0.0400" in summary_table(fit)


def test_one_kind_fits_its_scores_against_compute_without_being_asked(tmp_path):
    fit = run_fit(scored_sweep("clt", 1), tmp_path, FIT)
    law = fit["metric_laws"]["replacement_score"]
    assert law["exponent"] == pytest.approx(REPLACEMENT["clt"][1], abs=1e-9)
    assert law == fit["circuit_scores"]["kinds"]["clt"]["laws"]["replacement_score"]
    assert "cannot_measure" in fit["metric_laws"]["next_token_agreement"]
    assert (tmp_path / "circuit_scores.png").exists()


def test_a_missing_score_at_a_budget_cannot_be_measured(tmp_path):
    table = scored_sweep("clt", 1)
    table.loc[table.budget == BUDGETS[1], "replacement_score"] = np.nan
    fit = run_fit(table, tmp_path, FIT)
    law = fit["circuit_scores"]["kinds"]["clt"]["laws"]["replacement_score"]
    assert law == {"cannot_measure": f"replacement_score is missing or not positive at budget {BUDGETS[1]:.3g} "
                   "(a law in logs needs y > 0)"}  # fmt: skip
    assert "| clt | replacement_score | - | - | cannot measure" in (tmp_path / "report.md").read_text()


def test_a_sweep_without_scores_has_no_circuit_section_nor_plot(tmp_path):
    fit = run_fit(unscored_sweep(), tmp_path, FIT)
    assert fit["circuit_scores"] is None and fit["metric_laws"] == {}
    assert "Circuit quality" not in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "circuit_scores.png").exists()
