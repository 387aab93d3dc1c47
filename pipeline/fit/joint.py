"""OpenAI's joint law of loss in width N and sparsity k ("Scaling and evaluating sparse autoencoders"):

    L(N, k) = exp(alpha + beta_k ln k + beta_n ln N + gamma ln k ln N) + exp(zeta + eta ln k)

The sweep's `sparsity` column plays k (for TopK coders it is k; for ReLU coders it is the L1
coefficient, and the law is then only an empirical form).
"""

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

PARAMS = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")
FORM = "L = exp(alpha + beta_k ln k + beta_n ln N + gamma ln k ln N) + exp(zeta + eta ln k)"
MIN_SPARSITIES = 3  # distinct k values below which the k-dependence cannot be told from noise


def joint_loss(n: np.ndarray, k: np.ndarray, params) -> np.ndarray:
    """The joint law at widths n and sparsities k."""
    return np.exp(_ln_joint(np.log(k), np.log(n), np.asarray(params, float)))


def _terms(lk, ln, p):
    return p[0] + p[1] * lk + p[2] * ln + p[3] * lk * ln, p[4] + p[5] * lk


def _ln_joint(lk, ln, p):
    return np.logaddexp(*_terms(lk, ln, p))


def _jacobian(p, lk, ln):
    t1, t2 = _terms(lk, ln, p)
    w1 = 1.0 / (1.0 + np.exp(t2 - t1))  # share of the first term in the sum
    w2 = 1.0 - w1
    return np.column_stack([w1, w1 * lk, w1 * ln, w1 * lk * ln, w2, w2 * lk])


def joint_points(runs: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """(N, k, loss) points: per coder kind with the most distinct k, each (N, k)'s best loss.

    Each (N, k) takes its lowest loss over budgets and learning rates (after averaging seeds): the
    law describes a well-trained coder, and the largest budget at the best lr is the closest the
    sweep gets to one.
    """
    if "sparsity" not in runs.columns:
        return None, runs.iloc[:0]
    rows = runs[np.isfinite(pd.to_numeric(runs["sparsity"], errors="coerce")) & (runs["sparsity"] > 0)]
    kind = None
    if "kind" in rows.columns and len(rows):
        kind = rows.groupby("kind")["sparsity"].nunique().sort_values(ascending=False, kind="stable").index[0]
        rows = rows[rows["kind"] == kind]
    cell = rows.groupby(["n_features", "sparsity", "budget", "lr"], as_index=False)["loss"].mean()
    best = cell.groupby(["n_features", "sparsity"], as_index=False)["loss"].min()
    return (None if kind is None else str(kind)), best


def fit_joint_nk(runs: pd.DataFrame) -> tuple[dict | None, str | None]:
    """The joint law fitted in log loss, or None and a note saying why it was skipped."""
    kind, pts = joint_points(runs)
    n_k = pts["sparsity"].nunique() if len(pts) else 0
    if n_k < MIN_SPARSITIES:
        return None, f"joint L(N, k) law skipped: sparsity takes {n_k} distinct value(s), it needs >= {MIN_SPARSITIES}"
    n_n = pts["n_features"].nunique()
    if n_n < 2 or len(pts) < len(PARAMS) + 1:
        return None, f"joint L(N, k) law skipped: {len(pts)} (N, k) points over {n_n} width(s), it needs >= 7 over >= 2"
    lk, ln = np.log(pts["sparsity"].to_numpy(float)), np.log(pts["n_features"].to_numpy(float))
    loss = pts["loss"].to_numpy(float)
    best = None
    for p0 in _starts(lk, ln, loss):
        res = least_squares(
            lambda p: _ln_joint(lk, ln, p) - np.log(loss),
            p0,
            jac=lambda p: _jacobian(p, lk, ln),
            method="lm",
            max_nfev=5000,
        )
        if best is None or res.cost < best.cost:
            best = res
    rmse = float(np.sqrt(2 * best.cost / len(loss)))
    fit = {"kind": kind, "form": FORM, **{name: float(v) for name, v in zip(PARAMS, best.x)}}
    fit.update(n_points=len(loss), n_widths=int(n_n), n_sparsities=int(n_k), rmse_log=rmse)
    return fit, None


def _starts(lk: np.ndarray, ln: np.ndarray, loss: np.ndarray) -> list[np.ndarray]:
    """Starting points: the floor term set to a fraction of each k's lowest loss, the rest log-linear."""
    starts = []
    ks = np.unique(lk)
    lowest = np.array([loss[lk == k].min() for k in ks])
    design = np.column_stack([np.ones_like(lk), lk, ln, lk * ln])
    for frac in (0.05, 0.3, 0.6, 0.85):
        zeta_eta = np.polyfit(ks, np.log(frac * lowest), 1)[::-1]
        floor = np.exp(zeta_eta[0] + zeta_eta[1] * lk)
        rest = np.maximum(loss - floor, 1e-3 * loss)
        head, *_ = np.linalg.lstsq(design, np.log(rest), rcond=None)
        starts.append(np.concatenate([head, zeta_eta]))
    return starts
