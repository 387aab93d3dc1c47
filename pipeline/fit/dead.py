"""Dead-feature fraction against width N (and, jointly, against tokens T and learning rate).

The fit is linear in ln N: dead fraction = intercept + slope * ln N. A fraction lives in [0, 1],
so a power law in N would soon pass 1, and a logit cannot take the exact zeros small runs often
report; the published points (about 2%, 35%, 65% dead at 1M, 4M, 34M features) rise roughly
linearly in ln N. The slope reads as "extra dead fraction per e-fold of width".
"""

import numpy as np
import pandas as pd

FORM = "dead_fraction = intercept + slope * ln(n_features)"
JOINT_FORM = "dead_fraction = intercept + c_n ln(n_features) + c_t ln(tokens) + c_lr ln(lr)"


def _least_squares(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    total = float(np.sum((y - y.mean()) ** 2))
    return coef, (1.0 - float(resid @ resid) / total) if total > 0 else 1.0


def fit_dead_fraction(runs: pd.DataFrame) -> tuple[dict | None, str | None]:
    """The fit above, per-width means for plots, and the joint fit in ln N, ln T, ln lr.

    Returns None and the reason when the table has no usable dead fractions or a single width.
    """
    if "dead_fraction" not in runs.columns:
        return None, "dead-feature fit skipped: the results table has no dead_fraction column"
    dead = pd.to_numeric(runs["dead_fraction"], errors="coerce")
    rows = runs[np.isfinite(dead) & (dead >= 0) & (dead <= 1)]
    y = pd.to_numeric(rows["dead_fraction"]).to_numpy(float)
    if len(rows) < 3 or rows["n_features"].nunique() < 2:
        n_widths = rows["n_features"].nunique()
        reason = f"{len(rows)} run(s) with a dead fraction over {n_widths} width(s), it needs >= 3 over >= 2"
        return None, f"dead-feature fit skipped: {reason}"
    ln_n = np.log(rows["n_features"].to_numpy(float))
    (intercept, slope), r2 = _least_squares(np.column_stack([np.ones_like(ln_n), ln_n]), y)
    by_width = rows.assign(dead_fraction=y).groupby("n_features")["dead_fraction"].agg(["mean", "min", "max", "size"])
    fit = {
        "form": FORM,
        "intercept": float(intercept),
        "slope": float(slope),
        "r2": r2,
        "n_points": len(y),
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
    return fit, None


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
