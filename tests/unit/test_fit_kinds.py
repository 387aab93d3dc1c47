"""The fit of sweeps over several kinds and seeds, on synthetic results with known laws."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FitConfig
from pipeline.fit import run_fit, summary_table
from pipeline.fit.optima import split_budgets
from pipeline.fit.powerlaw import fit_power_law
from pipeline.fit.report import write_report
from pipeline.fit.seeds import resample, seed_spread
from pipeline.fit.stage import fit_results

from unit.test_fit import synthetic_sweep

# Truth without a floor: FVU = A N^-a + B T^-b, T = C / (6 N), so L*(C) is an exact power law in C.
A, B, A_EXP, B_EXP = 3.0, 30.0, 0.25, 0.35
LOSS_EXP = -A_EXP * B_EXP / (A_EXP + B_EXP)
N_EXP = B_EXP / (A_EXP + B_EXP)
BUDGETS = tuple(np.logspace(12, 15, 4))
FIT = FitConfig(n_bootstrap=100, seed=0)


def n_opt(budget: float) -> float:
    return (A_EXP * A / (B_EXP * B * 6**B_EXP)) ** (1 / (A_EXP + B_EXP)) * budget**N_EXP


def kind_sweep(kind, efficiency=1.0, l0=16.0, seeds=(0,), n_shift=0.0, noise=0.01, seed=0) -> pd.DataFrame:
    """One kind's results: 5 widths x 3 lrs per budget, FVU as if trained with `efficiency` x the budget.

    Seed s's width optimum moves by (C / 1e12) ** (n_shift * (2s - 1)), so its N* exponent is N_EXP -+ n_shift.
    The `loss` column adds a kind-specific penalty, which the comparison must not read.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for budget in BUDGETS:
        centre = n_opt(budget * efficiency)
        widths = np.round(centre * 2.0 ** np.arange(-2, 3))
        for s in seeds:
            shift = (budget / 1e12) ** (n_shift * (2 * s - 1)) if len(seeds) > 1 else 1.0
            for n in widths:
                tokens = budget / (6 * n)
                m = n / shift  # the width this seed's curve treats as n
                base = A * m**-A_EXP + B * (budget * efficiency / (6 * m)) ** -B_EXP
                for lr in (5e-4, 1e-3, 2e-3):
                    fvu = base * (1 + 0.1 * np.log(lr / 1e-3) ** 2) * np.exp(noise * rng.standard_normal())
                    rows.append({
                        "run_id": f"{kind}-{budget:.3g}-{n:.0f}-{lr:g}-{s}", "status": "done", "kind": kind,
                        "budget": budget, "n_features": int(n), "lr": lr, "sparsity": l0, "seed": s,
                        "tokens": int(tokens), "flops": budget, "loss": fvu + 5.0 * len(kind), "fvu": fvu,
                        "l0": l0 * np.exp(0.1 * rng.standard_normal()), "dead_fraction": 0.0,
                    })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory):
    """Kind `lean` reaches each FVU with half the compute `heavy` needs."""
    table = pd.concat([kind_sweep("heavy", 1.0, seed=1), kind_sweep("lean", 2.0, seed=2)], ignore_index=True)
    out = tmp_path_factory.mktemp("kinds")
    return run_fit(table, out, FIT), out


def test_each_kind_gets_its_own_laws_on_fvu(two_kinds):
    fit, _ = two_kinds
    kinds = fit["kinds"]
    assert kinds["metric"] == "fvu" and set(kinds["kinds"]) == {"heavy", "lean"}
    for k in kinds["kinds"].values():
        assert k["n_runs"] == 4 * 5 * 3 and k["n_budgets"] == 4 and len(k["optima"]) == 4
        assert k["frontier"]["exponent"] == pytest.approx(LOSS_EXP, abs=0.02)
        low, high = k["frontier"]["ci95"]
        assert low <= k["frontier"]["exponent"] <= high
        assert k["n_opt"]["exponent"] == pytest.approx(N_EXP, abs=0.1)
        assert k["optima"][0]["loss"] < 1.0  # FVU, not the `loss` column with its penalty
        assert k["l0_median"] == pytest.approx(16.0, rel=0.1) and k["seed_spread"] is None
    assert kinds["warnings"] == []


def test_the_compute_each_kind_needs_for_one_fvu(two_kinds):
    fit, _ = two_kinds
    kinds = fit["kinds"]
    # The reference is the higher of the kinds' L* at the middle budget (index 2 of 4): heavy's.
    assert kinds["reference_budget"] == BUDGETS[2]
    assert kinds["reference_loss"] == kinds["kinds"]["heavy"]["optima"][2]["loss"]
    need = kinds["compute_for_reference"]
    assert need["lean"]["ratio_to_least"] == 1.0
    assert need["heavy"]["ratio_to_least"] == pytest.approx(2.0, rel=0.2)
    for k in need.values():
        assert k["ci95"][0] <= k["compute"] <= k["ci95"][1] and k["within_budgets"]


def test_the_report_and_summary_compare_the_kinds(two_kinds):
    fit, out = two_kinds
    assert json.loads((out / "fit.json").read_text())["kinds"]["metric"] == "fvu"
    report = (out / "report.md").read_text()
    assert "## Kinds at equal compute (compared on fvu)" in report
    assert "| budget C | heavy | lean |" in report and "x least" in report
    for png in ("kinds_frontier.png", "kinds_l0_ev.png"):
        assert (out / png).stat().st_size > 0 and png in report and png in fit["plots"]
    summary = summary_table(fit)
    assert "kinds compared on fvu" in summary
    line = next(row for row in summary.splitlines() if row.startswith("heavy"))
    assert line.split()[-1] == f"{fit['kinds']['compute_for_reference']['heavy']['ratio_to_least']:.2f}x"


def test_kinds_at_different_l0s_are_named_in_a_warning():
    table = pd.concat([kind_sweep("a", l0=10.0), kind_sweep("b", l0=40.0)], ignore_index=True)
    warnings = fit_results(table, FitConfig(n_bootstrap=0)).fit["kinds"]["warnings"]
    assert len(warnings) == 1 and "median L0s differ by more than 2x (a 10.2, b 40.9)" in warnings[0]


def test_a_table_of_one_kind_has_no_comparison_and_one_seed_no_spread():
    fit = fit_results(synthetic_sweep(n_widths=5, n_lrs=3), FitConfig(n_bootstrap=0)).fit
    assert fit["kinds"] is None and fit["seed_spread"] is None


def test_one_seed_resamples_runs_as_before():
    budgets = split_budgets(kind_sweep("a"))
    first, second = np.random.default_rng(3), np.random.default_rng(3)
    for b in budgets:
        assert np.array_equal(resample(b, first), second.integers(0, len(b), len(b)))


def test_several_seeds_resample_whole_seeds():
    (b, *_) = split_budgets(kind_sweep("a", seeds=(0, 1, 2)))
    rng = np.random.default_rng(0)
    draws = [b.seed_idx[resample(b, rng)] for _ in range(200)]
    # Each draw holds every run of its drawn seeds' size: 3 seeds x 15 runs, some seeds twice, some not at all.
    assert all(len(d) == 45 for d in draws)
    assert any(len(set(d)) < 3 for d in draws) and any(len(set(d)) == 3 for d in draws)


def test_the_seed_spread_of_every_optimum_and_intervals_that_include_it():
    table = kind_sweep("a", seeds=(0, 1), n_shift=0.06, noise=0.005)
    bundle = fit_results(table, FIT)
    spread = bundle.fit["seed_spread"]
    assert len(spread) == 4 and all(s["n_seeds"] == 2 for s in spread)
    for s, opt in zip(spread, bundle.fit["optima"]):
        assert s["budget"] == opt["budget"]
        for name in ("n_features", "tokens", "lr", "loss"):
            assert s[name]["min"] <= s[name]["max"] and s[name]["std"] >= 0
    assert spread[-1]["n_features"]["max"] / spread[-1]["n_features"]["min"] > 1.5  # the seeds' N* drift apart
    per_seed = []
    for s in (0, 1):
        optima = fit_results(table[table.seed == s], FitConfig(n_bootstrap=0)).fit["optima"]
        c = np.array([o["budget"] for o in optima])
        per_seed.append(fit_power_law(c, np.array([o["n_features"] for o in optima])).exponent)
    assert per_seed[0] < N_EXP - 0.03 and per_seed[1] > N_EXP + 0.03
    low, high = bundle.fit["n_opt"]["ci95"]
    assert low <= min(per_seed) and high >= max(per_seed)
    assert seed_spread(split_budgets(table[table.seed == 0])) is None
    assert "## Seed-to-seed spread of the optima" in write_report(bundle.fit)
    two = fit_results(pd.concat([table, kind_sweep("b", seeds=(0, 1))], ignore_index=True), FitConfig(n_bootstrap=0))
    assert "Seed-to-seed spread of b's optima" in write_report(two.fit)
    assert [s["n_seeds"] for s in two.fit["kinds"]["kinds"]["b"]["seed_spread"]] == [2, 2, 2, 2]


def test_a_kind_at_several_sparsities_enters_once_per_sparsity():
    table = pd.concat([kind_sweep("a", l0=8.0), kind_sweep("a", l0=16.0), kind_sweep("b")], ignore_index=True)
    table["run_id"] = [f"{r}-{i}" for i, r in enumerate(table.run_id)]
    kinds = fit_results(table, FitConfig(n_bootstrap=0)).fit["kinds"]
    assert list(kinds["kinds"]) == ["a 8", "a 16", "b"]
    assert all(k["n_runs"] == 60 and len(k["sparsity"]) == 1 for k in kinds["kinds"].values())
