"""Kinds side by side at equal compute: each kind's laws fitted on its own runs, and what each needs for one loss.

The kinds' training objectives differ (a ReLU SAE's adds its L1 penalty, a TopK SAE's its AuxK
term), so their `loss` columns cannot be set beside each other. Every per-kind fit here uses FVU
instead, the fraction of variance unexplained on the held-out rows (1 - explained variance), which
all kinds measure alike: N*, T*, lr* and L* of a budget are those of its lowest FVU.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.fit.bootstrap import MIN_SAMPLES, LawSamples, bootstrap_laws
from pipeline.fit.optima import Optimum, find_optima, split_budgets
from pipeline.fit.powerlaw import PowerLaw, fit_power_law
from pipeline.fit.seeds import seed_spread

METRIC = "fvu"  # the column every kind is compared on
LAWS = {"n_opt": "n_features", "tokens_opt": "tokens", "lr_opt": "lr", "frontier": "loss"}  # key -> optimum field
EDGE = 1e-9  # relative slack of "within the budgets": a law through a kind's own points returns its edge budgets
L0_RATIO = 2.0  # kinds whose median L0s differ by more than this factor are not at one L0, and the report says so


@dataclass
class KindFit:
    """One kind's runs (loss = FVU), optima, laws in C and their bootstrap draws."""

    kind: str
    runs: pd.DataFrame
    optima: list[Optimum]
    laws: dict[str, PowerLaw | None]  # optimum field -> its law in C
    samples: dict[str, LawSamples]
    record: dict  # its entry in fit.json's `kinds`


def compare_kinds(finished: pd.DataFrame, n_bootstrap: int, seed: int) -> tuple[dict | None, list[KindFit]]:
    """fit.json's `kinds` section and the per-kind fits behind it; (None, []) unless the table holds several kinds.

    A kind run at several sparsities enters once per sparsity, labelled "<kind> <sparsity>"."""
    if "kind" not in finished.columns or finished["kind"].nunique() < 2 or METRIC not in finished.columns:
        return None, []
    metric = pd.to_numeric(finished[METRIC], errors="coerce")
    usable = finished[np.isfinite(metric) & (metric > 0)].assign(loss=metric)
    if usable["kind"].nunique() < 2:
        return None, []
    fits = [_fit_kind(label, rows, n_bootstrap, seed) for label, rows in settings(usable)]
    warnings = [w for f in fits for w in f.record.pop("warnings")]
    warnings += _l0_warnings(fits)
    budget, reference = _reference(fits)
    section = {
        "metric": METRIC,
        "kinds": {f.kind: f.record for f in fits},
        "reference_budget": budget,
        "reference_loss": reference,
        "compute_for_reference": _compute_for(fits, reference) if reference else {},
        "warnings": warnings,
    }
    return section, fits


def settings(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, runs) per kind, or per (kind, sparsity) where a kind has several: optima over a mix of
    sparsities would compare unlike coders. A kind with one setting is labelled by its name alone."""
    if "sparsity" not in runs.columns:
        return [(str(kind), rows) for kind, rows in runs.groupby("kind", sort=True)]
    settings = []
    for kind, rows in runs.groupby("kind", sort=True):
        by_sparsity = list(rows.groupby("sparsity", sort=True, dropna=False))
        settings += [(str(kind) if len(by_sparsity) == 1 else f"{kind} {s:g}", r) for s, r in by_sparsity]
    return settings


def _fit_kind(kind: str, runs: pd.DataFrame, n_bootstrap: int, seed: int) -> KindFit:
    runs = runs.reset_index(drop=True)
    budgets = split_budgets(runs)
    optima, warnings = find_optima(budgets)
    c = np.array([o.budget for o in optima])
    laws = {f: fit_power_law(c, np.array([getattr(o, f) for o in optima])) for f in LAWS.values()}
    samples = bootstrap_laws(budgets, n_bootstrap, seed, with_floor=False)
    if len(budgets) < 3:
        warnings.append(f"fewer than 3 budgets ({len(budgets)}): its laws pass exactly through their points")
    l0 = pd.to_numeric(runs["l0"], errors="coerce") if "l0" in runs.columns else pd.Series(dtype=float)
    record = {
        "n_runs": len(runs),
        "n_budgets": len(budgets),
        "sparsity": sorted({float(s) for s in runs["sparsity"]}) if "sparsity" in runs.columns else None,
        "l0_median": float(l0.median()) if l0.notna().any() else None,
        "l0_range": [float(l0.min()), float(l0.max())] if l0.notna().any() else None,
        "optima": [o.record() for o in optima],
        "seed_spread": seed_spread(budgets),
        **{key: _law_record(laws[f], samples[f]) for key, f in LAWS.items()},
        "warnings": [f"{kind}: {w}" for w in warnings],
    }
    return KindFit(kind, runs, optima, laws, samples, record)


def _reference(fits: list[KindFit]) -> tuple[float | None, float | None]:
    """(C, L): the middle of the budgets every kind has, and the highest of the kinds' L* there. The kind that
    needs most compute for L needs about C, inside the sweep; the others need less."""
    common = sorted(set.intersection(*({o.budget for o in f.optima} for f in fits)))
    if not common:
        return None, None
    budget = common[len(common) // 2]
    return budget, max(o.loss for f in fits for o in f.optima if o.budget == budget)


def _law_record(law: PowerLaw | None, samples: LawSamples) -> dict | None:
    if law is None:
        return None
    return {"coefficient": law.coefficient, "exponent": law.exponent, "ci95": samples.ci95()}


def compute_for_loss(ln_coefficient, exponent, loss: float) -> np.ndarray:
    """C at which L*(C) = coefficient * C**exponent reaches `loss`; NaN where the law does not fall."""
    ln_coefficient, exponent = np.asarray(ln_coefficient, float), np.asarray(exponent, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.exp((np.log(loss) - ln_coefficient) / exponent)
    return np.where(exponent < 0, c, np.nan)


def _compute_for(fits: list[KindFit], loss: float) -> dict:
    """Per kind: the compute its frontier needs for `loss`, its bootstrap 95% interval, and its ratio to the
    kind that needs least; `within_budgets` says whether that compute lies inside the kind's sweep."""
    out = {}
    for f in fits:
        law, draws = f.laws["loss"], f.samples["loss"]
        if law is None:
            out[f.kind] = None
            continue
        c = float(compute_for_loss(law.ln_coefficient, law.exponent, loss))
        drawn = compute_for_loss(draws.ln_coefficient, draws.exponent, loss) if draws.exponent else np.array([])
        drawn = drawn[np.isfinite(drawn)]
        budgets = [o.budget for o in f.optima]
        out[f.kind] = {
            "compute": c,
            "ci95": [float(v) for v in np.percentile(drawn, [2.5, 97.5])] if len(drawn) >= MIN_SAMPLES else None,
            "within_budgets": bool(min(budgets) * (1 - EDGE) <= c <= max(budgets) * (1 + EDGE)),
        }
    finite = [v["compute"] for v in out.values() if v and np.isfinite(v["compute"])]
    for v in out.values():
        if v:
            v["ratio_to_least"] = v["compute"] / min(finite) if finite and np.isfinite(v["compute"]) else None
    return out


def _l0_warnings(fits: list[KindFit]) -> list[str]:
    medians = {f.kind: f.record["l0_median"] for f in fits if f.record["l0_median"]}
    if len(medians) < 2 or max(medians.values()) <= L0_RATIO * min(medians.values()):
        return []
    listed = ", ".join(f"{k} {v:.3g}" for k, v in medians.items())
    return [
        f"the kinds' median L0s differ by more than {L0_RATIO:g}x ({listed}): they are not compared at one L0; "
        "record each penalty kind's sparsity for the target L0 again"
    ]
