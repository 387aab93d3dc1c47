"""The fit stage: results table in, fit.json + report.md + PNG plots out.

Every law is y = coefficient * C**exponent with C the planned budget in FLOPs and a signed
exponent (loss and learning rate fall with compute, so theirs are negative).
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import write_text_atomic
from pipeline.config import FitConfig
from pipeline.errors import ConfigError
from pipeline.fit.bootstrap import MIN_SAMPLES, LawSamples, bootstrap_laws
from pipeline.fit.circuit_laws import SCORES, fit_circuit_scores, scored, summary_text
from pipeline.fit.dead import fit_dead_fraction
from pipeline.fit.extrapolate import extrapolation_check
from pipeline.fit.joint import fit_joint_nk
from pipeline.fit.kinds import KindFit, compare_kinds
from pipeline.fit.kinds_report import kinds_table
from pipeline.fit.metric_laws import check_metrics, fit_metric_laws
from pipeline.fit.optima import Optimum, find_optima, split_budgets
from pipeline.fit.powerlaw import FloorLaw, PowerLaw, fit_power_law, fit_power_law_with_floor
from pipeline.fit.report import law_table, write_plots, write_report
from pipeline.fit.runs import analysis_slice, check_columns, finished_runs
from pipeline.fit.seeds import seed_spread

SCHEMA_VERSION = 1
CONVENTION = (
    "y = coefficient * C**exponent, C = planned budget in FLOPs; exponents are signed (loss and lr exponents "
    "are negative); ci95 is the exponent's bootstrap 95% interval"
)
LAWS = {"n_opt": "n_features", "tokens_opt": "tokens", "lr_opt": "lr"}  # fit.json key -> optimum field


def read_results(paths: list[Path]) -> pd.DataFrame:
    """Concatenate results tables (parquet); ConfigError names a missing file or its missing columns."""
    if not paths:
        raise ConfigError("fit.results: no results table given; expected one or more parquet files")
    tables = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"{path}: results table not found (fit.results expects existing parquet files)")
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a corrupt or foreign file
            raise ConfigError(f"{path}: cannot be read as a parquet results table ({err})") from err
        check_columns(table, str(path))
        tables.append(table)
    results = pd.concat(tables, ignore_index=True)
    results.attrs["source"] = ", ".join(str(p) for p in paths)
    return results


@dataclass
class FitBundle:
    """fit.json's content plus the in-memory pieces the plots draw from."""

    fit: dict
    runs: pd.DataFrame  # finished runs of the analysed (kind, sparsity) setting
    finished: pd.DataFrame  # all finished runs (the joint law uses every sparsity)
    optima: list[Optimum]
    laws: dict[str, PowerLaw | None]  # optimum field -> its law in C
    floor: FloorLaw | None
    samples: dict[str, LawSamples]
    kinds: list[KindFit] = field(default_factory=list)  # each kind's own fits, when the table holds several


def fit_results(results: pd.DataFrame, cfg: FitConfig) -> FitBundle:
    """All fits, without writing anything."""
    source = results.attrs.get("source", "results table")
    check_metrics(results, list(cfg.metrics), source)
    finished, warnings = finished_runs(results, source)
    runs, analysis, notes = analysis_slice(finished)
    budgets = split_budgets(runs)
    optima, optimum_warnings = find_optima(budgets)
    warnings += optimum_warnings
    if len(budgets) < 3:
        warnings.append(
            f"only {len(budgets)} budget(s) with finished runs: a power law needs >= 3 budgets to be checked by its "
            "residuals"
            + (", so no law was fitted" if len(budgets) < 2 else "; the laws below pass exactly through 2 points")
        )
    c = np.array([o.budget for o in optima])
    laws = {
        f: fit_power_law(c, np.array([getattr(o, f) for o in optima])) for f in ("n_features", "tokens", "lr", "loss")
    }
    floor = fit_power_law_with_floor(c, np.array([o.loss for o in optima]))
    notes += _floor_notes(floor, len(budgets))
    samples = bootstrap_laws(budgets, cfg.n_bootstrap, cfg.seed, with_floor=floor is not None)
    dead, dead_note = fit_dead_fraction(runs)
    joint, joint_note = fit_joint_nk(finished)
    extrapolation, extrapolation_warning = extrapolation_check(optima)
    warnings += [w for w in (dead_note, extrapolation_warning) if w]
    notes += [n for n in (joint_note,) if n]
    kinds, kind_fits = compare_kinds(finished, cfg.n_bootstrap, cfg.seed)

    fit = {
        "schema_version": SCHEMA_VERSION,
        "convention": CONVENTION,
        "source": source,
        "n_runs": len(finished),
        "n_runs_in_table": len(results),
        "n_budgets": len(budgets),
        "analysis": analysis,
        "optima": [o.record() for o in optima],
        **{key: _law_record(laws[f], samples[f], cfg.n_bootstrap) for key, f in LAWS.items()},
        "loss_frontier": None
        if laws["loss"] is None
        else {
            "power_law": _law_record(laws["loss"], samples["loss"], cfg.n_bootstrap),
            "with_floor": _floor_record(floor, samples["loss_floor"], cfg.n_bootstrap),
        },
        "dead_features": dead,
        "metric_laws": fit_metric_laws(runs, _metric_names(cfg.metrics, runs)),
        "circuit_scores": fit_circuit_scores(finished),
        "joint_nk": joint,
        "extrapolation": extrapolation,
        "seed_spread": seed_spread(budgets),
        "kinds": kinds,
        "n_bootstrap": cfg.n_bootstrap,
        "bootstrap_seed": cfg.seed,
        "warnings": warnings,
        "notes": notes,
    }
    if cfg.n_bootstrap < MIN_SAMPLES:
        warnings.append(f"fit.n_bootstrap={cfg.n_bootstrap} is below {MIN_SAMPLES}: no confidence intervals")
    else:
        for key in (*LAWS, "loss_frontier"):
            record = fit[key] if key != "loss_frontier" else (fit[key] or {}).get("power_law")
            if record is not None and record["ci95"] is None:
                warnings.append(f"{key}: too few successful bootstrap refits for a 95% interval")
    return FitBundle(_json_safe(fit), runs, finished, optima, laws, floor, samples, kind_fits)


def _metric_names(asked: list[str], runs: pd.DataFrame) -> list[str]:
    """`fit.metrics`, and the circuit scores the analysed runs hold: they are fitted without being asked for."""
    return list(asked) + [name for name in scored(SCORES, runs) if name not in asked]


def _floor_notes(floor: FloorLaw | None, n_budgets: int) -> list[str]:
    if floor is None:
        return (
            ["loss frontier with a floor not fitted: it needs >= 3 budgets"]
            if n_budgets < 3
            else ["loss frontier with a floor did not converge"]
        )
    notes = []
    if n_budgets == 3:
        notes.append("loss frontier with a floor: 3 parameters through 3 budgets, an exact interpolation, not a test")
    if floor.irreducible == 0.0:
        notes.append("loss frontier with a floor: the floor fitted to its bound 0 (no irreducible loss visible)")
    return notes


def _law_record(law: PowerLaw | None, samples: LawSamples, n_bootstrap: int) -> dict | None:
    if law is None:
        return None
    return {
        "coefficient": law.coefficient,
        "exponent": law.exponent,
        "ci95": samples.ci95(),
        "n_bootstrap_ok": len(samples.exponent),
        "n_bootstrap": n_bootstrap,
    }


def _floor_record(law: FloorLaw | None, samples: LawSamples, n_bootstrap: int) -> dict | None:
    if law is None:
        return None
    return {
        "irreducible": law.irreducible,
        "coefficient": law.coefficient,
        "exponent": law.exponent,
        "ci95": samples.ci95(),
        "n_bootstrap_ok": len(samples.exponent),
        "n_bootstrap": n_bootstrap,
    }


def _json_safe(value):
    """numpy scalars to Python, non-finite floats to None: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_fit(results: pd.DataFrame, out: Path, cfg: FitConfig) -> dict:
    """Fit the results table and write out/fit.json, out/report.md and PNG plots; return the fit dict.

    fit.json is written last, so its presence means the stage finished.
    """
    bundle = fit_results(results, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle.fit["plots"] = write_plots(bundle, out)
    write_text_atomic(out / "report.md", write_report(bundle.fit))
    write_text_atomic(out / "fit.json", json.dumps(bundle.fit, indent=2, allow_nan=False) + "\n")
    return bundle.fit


def summary_table(fit: dict) -> str:
    """The fitted laws as a plain-text table, and how many runs and budgets they rest on."""
    n_warn = len(fit.get("warnings", []))
    footer = f"{fit.get('n_runs', 0)} finished runs, {fit.get('n_budgets', 0)} budgets, {n_warn} warning(s)"
    circuits = summary_text(fit.get("circuit_scores"))
    return law_table(fit) + "\n" + kinds_table(fit.get("kinds")) + circuits + footer
