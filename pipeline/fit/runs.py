"""Which rows of a results table the fit may use, and the one (kind, sparsity) slice it analyses."""

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError

# Without these the isoFLOP analysis cannot be done at all; the others (kind, sparsity, seed,
# dead_fraction, run_id, ...) are used when present.
REQUIRED_COLUMNS = ("status", "budget", "n_features", "lr", "tokens", "loss")


def budget_label(budget: float) -> str:
    """How a budget is named in warnings: three significant digits, e.g. `budget 1e+14`."""
    return f"budget {budget:.3g}"


def check_columns(table: pd.DataFrame, source: str) -> None:
    """Raise ConfigError naming `source` and every required column it lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(
            f"{source}: missing column(s) {', '.join(missing)}; a results table needs {', '.join(REQUIRED_COLUMNS)}"
        )


def finished_runs(table: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """The rows with status 'done' and a finite positive loss, plus warnings about what was dropped.

    A run that was retried appears once per attempt; only its last finished row counts.
    """
    check_columns(table, source)
    df = table.reset_index(drop=True)
    if "run_id" in df.columns:
        is_done = df["status"].astype(str) == "done"
        repeated = df[is_done].duplicated("run_id", keep="last")
        df = df.drop(index=repeated[repeated].index)
    done = df["status"].astype(str) == "done"
    numeric = {c: pd.to_numeric(df[c], errors="coerce") for c in ("budget", "n_features", "lr", "tokens", "loss")}
    usable = done & np.isfinite(numeric["loss"]) & (numeric["loss"] > 0)
    for c in ("budget", "n_features", "lr", "tokens"):
        usable &= np.isfinite(numeric[c]) & (numeric[c] > 0)
    if not usable.any():
        raise ConfigError(
            f"{source}: no finished runs (status 'done' with a finite loss and positive budget, n_features, lr, "
            f"tokens) among {len(table)} row(s)"
        )
    warnings = []
    n_failed = int((~done).sum())
    if n_failed:
        warnings.append(f"{n_failed} run(s) not finished (status != 'done') were left out")
    n_bad = int((done & ~usable).sum())
    if n_bad:
        warnings.append(
            f"{n_bad} finished run(s) with a non-finite or non-positive loss/budget/width/lr/tokens were left out"
        )
    out = df[usable].copy()
    for c, values in numeric.items():
        out[c] = values[usable].astype(float)
    # Budgets are a grid of repeated values; rounding merges copies that differ only by float noise.
    out["budget"] = [float(f"{b:.12g}") for b in out["budget"]]
    warnings += _budgets_without_runs(df, out)
    return out.reset_index(drop=True), warnings


def _budgets_without_runs(table: pd.DataFrame, done: pd.DataFrame) -> list[str]:
    budgets = pd.to_numeric(table["budget"], errors="coerce")
    planned = {float(f"{b:.12g}") for b in budgets[np.isfinite(budgets)]}
    return [
        f"{budget_label(b)}: no finished runs; it is left out of every fit"
        for b in sorted(planned - set(done["budget"]))
    ]


def analysis_slice(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict, list[str]]:
    """The (kind, sparsity) setting with the most finished runs, which the isoFLOP analysis uses.

    Optima over a mix of coders or sparsities would compare unlike losses, so one setting is
    analysed; the others still enter the joint L(N, k) law.
    """
    keys = [c for c in ("kind", "sparsity") if c in runs.columns]
    if not keys:
        return runs, {"kind": None, "sparsity": None, "n_runs": len(runs)}, []
    counts = runs.groupby(keys, dropna=False).size().sort_values(ascending=False, kind="stable")
    best = counts.index[0] if len(keys) > 1 else (counts.index[0],)
    mask = np.ones(len(runs), dtype=bool)
    for key, value in zip(keys, best):
        mask &= (runs[key] == value).to_numpy() | (pd.isna(value) & runs[key].isna().to_numpy())
    chosen = {k: _plain(v) for k, v in zip(keys, best)}
    described = ", ".join(f"{k}={v}" for k, v in chosen.items())
    notes = []
    if len(counts) > 1:
        notes.append(
            f"the table holds {len(counts)} (kind, sparsity) settings; optima and power laws use the one with "
            f"the most finished runs ({described}, {int(mask.sum())} runs)"
        )
    info = {"kind": chosen.get("kind"), "sparsity": chosen.get("sparsity"), "n_runs": int(mask.sum())}
    return runs[mask].reset_index(drop=True), info, notes


def _plain(value):
    """A numpy scalar as a JSON-friendly Python value."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
