"""Dead-feature fraction against width N (and, jointly, against tokens T and learning rate).

The fit is linear in ln N: dead fraction = intercept + slope * ln N. A fraction lives in [0, 1],
so a power law in N would soon pass 1, and a logit cannot take the exact zeros small runs often
report; the published points (about 2%, 35%, 65% dead at 1M, 4M, 34M features) rise roughly
linearly in ln N. The slope reads as "extra dead fraction per e-fold of width".
"""

import math

import numpy as np
import pandas as pd

FORM = "dead_fraction = intercept + slope * ln(n_features)"
JOINT_FORM = "dead_fraction = intercept + c_n ln(n_features) + c_t ln(tokens) + c_lr ln(lr)"


def _least_squares(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    total = float(np.sum((y - y.mean()) ** 2))
    return coef, (1.0 - float(resid @ resid) / total) if total > 0 else math.nan


def cannot_measure(reason: str) -> tuple[dict, str]:
    """A fit that was not made: its record and its warning both say why."""
    return {"cannot_measure": reason}, f"dead-feature fit: cannot measure: {reason}"


def measured_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The runs whose dead fraction means something, or none and why not.

    A run no longer than its dead-feature window counts a feature dead only if it never fired at
    all, early training included, so its dead fraction is near 0 whatever the width: it is left out.
    """
    if "dead_fraction" not in runs.columns:
        return runs.iloc[:0], "the results table has no dead_fraction column"
    dead = pd.to_numeric(runs["dead_fraction"], errors="coerce")
    rows = runs[np.isfinite(dead) & (dead >= 0) & (dead <= 1)]
    if {"dead_window_tokens", "tokens"} <= set(rows.columns):
        window = pd.to_numeric(rows["dead_window_tokens"], errors="coerce")
        short = ~(window < pd.to_numeric(rows["tokens"], errors="coerce"))
        if len(rows) and short.all():
            return rows.iloc[:0], (
                f"every run ({len(rows)}) is no longer than its dead-feature window (train.dead_window_tokens), "
                "so a feature counts as dead only if it never fired at all"
            )
        rows = rows[~short]
    y = pd.to_numeric(rows["dead_fraction"]).to_numpy(float)
    if len(y) and np.ptp(y) == 0:
        return rows.iloc[:0], f"every dead fraction is {y[0]:g} ({len(y)} runs): nothing varies to fit"
    n_widths = rows["n_features"].nunique()
    if len(rows) < 3 or n_widths < 2:
        return rows.iloc[
            :0
        ], f"{len(rows)} run(s) with a dead fraction over {n_widths} width(s), it needs >= 3 over >= 2"
    return rows, None


def fit_dead_fraction(runs: pd.DataFrame) -> tuple[dict, str | None]:
    """The fit above, per-width means for plots, and the joint fit in ln N, ln T, ln lr.

    When it cannot be measured (see `measured_runs`) the record is {"cannot_measure": why}, and the
    warning says the same.
    """
    rows, reason = measured_runs(runs)
    if reason:
        return cannot_measure(reason)
    y = pd.to_numeric(rows["dead_fraction"]).to_numpy(float)
    ln_n = np.log(rows["n_features"].to_numpy(float))
    (intercept, slope), r2 = _least_squares(np.column_stack([np.ones_like(ln_n), ln_n]), y)
    by_width = rows.assign(dead_fraction=y).groupby("n_features")["dead_fraction"].agg(["mean", "min", "max", "size"])
    n_left_out = len(runs) - len(rows)
    fit = {
        "form": FORM,
        "intercept": float(intercept),
        "slope": float(slope),
        "r2": r2,
        "n_points": len(y),
        "n_left_out": n_left_out,
        "by_width": [
            {
                "n_features": float(n),
                "mean": float(r["mean"]),
                "min": float(r["min"]),
                "max": float(r["max"]),
                "n_runs": int(r["size"]),
            }
            for n, r in by_width.iterrows()
        ],
        "joint": _joint_fit(rows, y, ln_n),
    }
    note = (
        f"dead-feature fit: {n_left_out} run(s) without a measured dead fraction were left out" if n_left_out else None
    )
    return fit, note


def _joint_fit(rows: pd.DataFrame, y: np.ndarray, ln_n: np.ndarray) -> dict | None:
    """Dead fraction on ln N, ln T and ln lr together; a variable that never varies is left out (null)."""
    columns = {"c_n": ln_n, "c_t": np.log(rows["tokens"].to_numpy(float)), "c_lr": np.log(rows["lr"].to_numpy(float))}
    varying = {k: v for k, v in columns.items() if np.ptp(v) > 0}
    if len(y) < len(varying) + 3:
        return None
    coef, r2 = _least_squares(np.column_stack([np.ones_like(y), *varying.values()]), y)
    named = dict(zip(varying, coef[1:]))
    return {
        "form": JOINT_FORM,
        "intercept": float(coef[0]),
        **{k: (float(named[k]) if k in named else None) for k in columns},
        "r2": r2,
    }
