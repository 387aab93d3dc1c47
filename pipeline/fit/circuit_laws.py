"""Circuit quality in compute (`train.trace_prompts`): each kind's circuit scores at each budget, their laws in C,
and the kinds side by side at equal compute (Circuit Tracing's comparison of CLTs with per-layer transcoders).

A kind's point at a budget is its lowest-loss arm there, as in `metric_laws`; a kind run at several
sparsities enters once per sparsity, labelled as `kinds` labels it. Losses are compared only within a
kind, so every kind's points are its own best arms. Kinds without scores (SAEs) are left out.
"""

import numpy as np
import pandas as pd

from pipeline.fit.kinds import settings
from pipeline.fit.metric_laws import FORM, best_runs, fit_metric_law

SCORES = ("replacement_score", "completeness_score", "next_token_agreement")  # the scorer's columns
PLOTTED = "replacement_score"
TITLE = "Replacement score against compute per kind"


def scored(names, table: pd.DataFrame) -> list[str]:
    """The circuit scores among `names` that `table` holds with at least one finite value."""
    return [n for n in SCORES if n in names and n in table.columns and _numbers(table[n]).notna().any()]


def _numbers(column: pd.Series) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    return values.where(np.isfinite(values))


def fit_circuit_scores(finished: pd.DataFrame) -> dict | None:
    """fit.json's `circuit_scores`: per kind, each budget's best arm and its scores, and each score's law in C;
    None when no run has a score."""
    names = scored(SCORES, finished)
    if not names:
        return None
    rows = finished[finished[names].apply(_numbers).notna().any(axis=1)]
    if "kind" not in rows.columns:
        rows = rows.assign(kind="all")
    kinds = {}
    for label, runs in settings(rows):
        best = best_runs(runs.reset_index(drop=True))
        points = [
            {"budget": float(r["budget"]), "run_id": str(r.get("run_id", "")), **{n: _value(r[n]) for n in names}}
            for _, r in best.iterrows()
        ]
        kinds[label] = {"points": points, "laws": {n: fit_metric_law(best, n) for n in names}}
    return {"metrics": names, "form": FORM, "kinds": kinds}


def _value(v) -> float | None:
    v = pd.to_numeric(v, errors="coerce")
    return float(v) if np.isfinite(v) else None


def report_lines(section: dict | None) -> list[str]:
    """report.md's section: each budget's best replacement score per kind, then every score's law per kind."""
    if not section:
        return []
    names, kinds = section["metrics"], section["kinds"]
    lines = ["## Circuit quality in compute", "", f"`{section['form']}`, each kind on its own runs.", ""]
    budgets = sorted({p["budget"] for k in kinds.values() for p in k["points"]})
    for name in names:
        lines += [f"{name} of each budget's best arm per kind:", ""]
        lines += ["| budget C | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for budget in budgets:
            lines.append(f"| {budget:.3g} | " + " | ".join(_cell(k, budget, name) for k in kinds.values()) + " |")
        lines.append("")
    lines += ["| kind | score | coefficient | exponent | points |", "|---|---|---|---|---|"]
    for label, k in kinds.items():
        for name, law in k["laws"].items():
            if "cannot_measure" in law:
                lines.append(f"| {label} | {name} | - | - | cannot measure: {law['cannot_measure']} |")
            else:
                cells = f"{law['coefficient']:.4g} | {law['exponent']:.4f} | {law['n_points']}"
                lines.append(f"| {label} | {name} | {cells} |")
    return lines + [""]


def summary_text(section: dict | None) -> str:
    """Plain text, one line per kind: its best arm's replacement score at its largest budget and the score's law."""
    if not section or PLOTTED not in section["metrics"]:
        return ""
    lines = [f"{PLOTTED} of each budget's best arm per kind:"]
    for label, k in section["kinds"].items():
        last, law = k["points"][-1], k["laws"][PLOTTED]
        value = "NaN" if last[PLOTTED] is None else f"{last[PLOTTED]:.4f}"
        fitted = (
            f"C^{law['exponent']:.4f}" if "cannot_measure" not in law else f"cannot measure: {law['cannot_measure']}"
        )
        lines.append(f"{label:<12} {value} at C={last['budget']:.3g}; {fitted}")
    return "\n".join(lines) + "\n"


def _cell(kind: dict, budget: float, name: str) -> str:
    point = next((p for p in kind["points"] if p["budget"] == budget), None)
    if point is None:
        return "-"
    return "NaN" if point[name] is None else f"{point[name]:.4f}"


def draw_circuit_scores(new_figure, bundle):
    """Each kind's best replacement score per budget against compute, and its law where it could be fitted."""
    section = bundle.fit.get("circuit_scores")
    if not section or PLOTTED not in section["metrics"]:
        return None
    from matplotlib import colormaps

    fig, ax = new_figure(6.5, 4.5)
    colours = colormaps["tab10"](np.arange(len(section["kinds"])) % 10)
    for colour, (label, k) in zip(colours, section["kinds"].items()):
        points = [(p["budget"], p[PLOTTED]) for p in k["points"] if p[PLOTTED] is not None]
        if not points:
            continue
        c, y = np.array(points).T
        law = k["laws"][PLOTTED]
        ax.plot(c, y, "o-" if "cannot_measure" in law else "o", color=colour, ms=5, label=label)
        if "cannot_measure" not in law:
            grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 100)
            fitted = law["coefficient"] * grid ** law["exponent"]
            ax.plot(grid, fitted, "-", color=colour, lw=1, label=f"{label}: C^{law['exponent']:.3f}")
    ax.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="replacement score (best arm)", title=TITLE)
    ax.legend(fontsize=7)
    return fig
