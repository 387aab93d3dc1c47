"""Laws of any recorded metric in compute (`fit.metrics`): metric = coefficient * C**exponent, through the
metric of each budget's lowest-loss run.

A law in logs needs positive values and more points than its two parameters to be tested; where
that fails the record says "cannot measure" and why, and holds no numbers.
"""

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.fit.runs import budget_label

FORM = "metric = coefficient * C**exponent at each budget's lowest-loss run"


def check_metric_names(names: list[str], columns, source: str) -> None:
    """ConfigError naming `fit.metrics` unless each name is one of `columns` (of the table `source` names)."""
    for name in names:
        if name not in columns:
            raise ConfigError(f"fit.metrics: {name!r} is not a column of {source}; expected one of {list(columns)}")


def check_metrics(table: pd.DataFrame, names: list[str], source: str) -> None:
    """ConfigError naming `fit.metrics` unless each name is a numeric column of the results table."""
    check_metric_names(names, table.columns, source)
    for name in names:
        if not pd.api.types.is_numeric_dtype(table[name]):
            raise ConfigError(f"fit.metrics: {name!r} in {source} is not numeric (dtype {table[name].dtype})")


def fit_metric_laws(runs: pd.DataFrame, names: list[str]) -> dict[str, dict]:
    """Each metric's law in C, or {"cannot_measure": why}."""
    best = best_runs(runs)
    return {name: fit_metric_law(best, name) for name in names}


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Each budget's lowest-loss run, in increasing budget."""
    return runs.loc[runs.groupby("budget")["loss"].idxmin()].sort_values("budget")


def fit_metric_law(best: pd.DataFrame, name: str) -> dict:
    """The law of column `name` through `best`'s rows (one per budget), or {"cannot_measure": why}."""
    c, y = best["budget"].to_numpy(float), pd.to_numeric(best[name], errors="coerce").to_numpy(float)
    points = [
        {"budget": float(b), "value": float(v), "run_id": str(r)}
        for b, v, r in zip(c, y, best.get("run_id", pd.Series([""] * len(best))))
    ]
    bad = [budget_label(b) for b, v in zip(c, y) if not (np.isfinite(v) and v > 0)]
    if bad:
        return {"cannot_measure": f"{name} is missing or not positive at {', '.join(bad)} (a law in logs needs y > 0)"}
    if len(c) < 2:
        return {"cannot_measure": f"{len(c)} budget(s), a law of 2 parameters needs >= 2"}
    if np.ptp(y) == 0:
        return {"cannot_measure": f"{name} is {y[0]:g} at every budget: nothing varies to fit"}
    x, ly = np.log(c), np.log(y)
    slope, intercept = np.polyfit(x - x.mean(), ly, 1)
    resid = ly - (intercept + slope * (x - x.mean()))
    record = {
        "form": FORM,
        "coefficient": float(np.exp(intercept - slope * x.mean())),
        "exponent": float(slope),
        "rms_log_residual": float(np.sqrt(np.mean(resid**2))),
        "n_points": len(c),
        "points": points,
    }
    if len(c) == 2:
        record["note"] = "2 parameters through 2 budgets: an exact interpolation, not a test"
    return record


def report_lines(laws: dict[str, dict]) -> list[str]:
    """report.md's section on the metric laws."""
    if not laws:
        return []
    lines = [
        "## Metrics in compute",
        "",
        f"`{FORM}`.",
        "",
        "| metric | coefficient | exponent | points |",
        "|---|---|---|---|",
    ]
    for name, law in laws.items():
        if "cannot_measure" in law:
            lines.append(f"| {name} | - | - | cannot measure: {law['cannot_measure']} |")
        else:
            lines.append(f"| {name} | {law['coefficient']:.4g} | {law['exponent']:.4f} | {law['n_points']} |")
    return lines + [""]
