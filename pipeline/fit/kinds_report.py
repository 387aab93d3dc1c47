"""The report's comparison of kinds (tables and plots) and its seed-to-seed spread of the optima."""

import numpy as np

from pipeline.fit.seeds import SPREAD_FIELDS

TITLES = {"kinds_frontier": "FVU frontier per kind", "kinds_l0_ev": "L0 against explained variance per budget"}
LABELS = {"n_features": "N*", "tokens": "T*", "lr": "lr*", "loss": "L*"}


def _ci(ci: list[float] | None, fmt: str = ".3f") -> str:
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "-"


def _compute_cells(need: dict | None) -> tuple[str, str, str]:
    if not need or not np.isfinite(need["compute"] or np.nan):
        return "-", "-", "(its FVU does not fall with compute)"
    ratio = f"{need['ratio_to_least']:.2f}x" if need.get("ratio_to_least") else "-"
    return (
        f"{need['compute']:.3g}",
        ratio,
        _ci(need["ci95"], ".3g") + ("" if need["within_budgets"] else " (extrapolated)"),
    )


def kinds_table(kinds: dict | None) -> str:
    """Plain text, one line per kind: its median L0, FVU frontier exponent and the compute it needs for the
    reference FVU; empty without a comparison."""
    if not kinds or kinds["reference_loss"] is None:
        return ""
    lines = [f"kinds compared on {kinds['metric']}; compute for {kinds['metric']} {kinds['reference_loss']:.4g}:"]
    lines.append(f"{'kind':<12} {'median L0':>9} {'L* exponent':>11}  {'95% CI':<18} {'compute':>9} {'x least':>8}")
    for kind, k in kinds["kinds"].items():
        frontier = k["frontier"]
        exponent = f"{frontier['exponent']:.3f}" if frontier else "-"
        ci = _ci(frontier["ci95"]) if frontier else "(not fitted)"
        compute, ratio, _ = _compute_cells(kinds["compute_for_reference"].get(kind))
        l0 = f"{k['l0_median']:.3g}" if k["l0_median"] is not None else "-"
        lines.append(f"{kind:<12} {l0:>9} {exponent:>11}  {ci:<18} {compute:>9} {ratio:>8}")
    return "\n".join(lines) + "\n"


def spread_table(spread: list[dict] | None) -> list[str]:
    """Markdown rows: per budget, each optimum's range and standard deviation over seeds."""
    if not spread:
        return []
    head = "| budget C | seeds | " + " | ".join(f"{LABELS[f]} min to max (sd)" for f in SPREAD_FIELDS) + " |"
    lines = [head, "|---|---|" + "---|" * len(SPREAD_FIELDS)]
    for s in spread:
        cells = [f"{s[f]['min']:.4g} to {s[f]['max']:.4g} ({s[f]['std']:.2g})" for f in SPREAD_FIELDS]
        lines.append(f"| {s['budget']:.3g} | {s['n_seeds']} | " + " | ".join(cells) + " |")
    return lines


def seed_section(fit: dict) -> list[str]:
    rows = spread_table(fit.get("seed_spread"))
    if not rows:
        return []
    text = "Each seed's runs alone give these optima; the intervals above resample whole seeds, so they include it."
    return ["## Seed-to-seed spread of the optima", "", text, "", *rows, ""]


def kinds_section(fit: dict) -> list[str]:
    """Markdown: the kinds' optimal FVU per budget, their laws in compute, and the compute each needs for one FVU."""
    kinds = fit.get("kinds")
    if not kinds:
        return []
    metric, names = kinds["metric"], list(kinds["kinds"])
    lines = [f"## Kinds at equal compute (compared on {metric})", ""]
    lines += [f"- {w}" for w in kinds["warnings"]] + ([""] if kinds["warnings"] else [])
    lines += ["| kind | sparsity | median L0 (range) | runs |", "|---|---|---|---|"]
    for kind, k in kinds["kinds"].items():
        l0 = f"{k['l0_median']:.3g} ({k['l0_range'][0]:.3g} to {k['l0_range'][1]:.3g})" if k["l0_range"] else "-"
        lines.append(f"| {kind} | {', '.join(f'{s:g}' for s in k['sparsity'] or [])} | {l0} | {k['n_runs']} |")
    lines += ["", f"Optimal {metric} L* per budget (min to max over seeds where there are several):", ""]
    lines += ["| budget C | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for budget in sorted({o["budget"] for k in kinds["kinds"].values() for o in k["optima"]}):
        lines.append(f"| {budget:.3g} | " + " | ".join(_loss_cell(kinds["kinds"][n], budget) for n in names) + " |")
    lines += ["", "| kind | " + " | ".join(f"{v}(C) exponent [95% CI]" for v in LABELS.values()) + " |"]
    lines.append("|---|" + "---|" * len(LABELS))
    for kind, k in kinds["kinds"].items():
        cells = [f"{law['exponent']:.3f} {_ci(law['ci95'])}" if law else "-" for law in
                 (k["n_opt"], k["tokens_opt"], k["lr_opt"], k["frontier"])]  # fmt: skip
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    if kinds["reference_loss"] is None:
        return lines + ["No budget has runs of every kind: no common FVU to compare the compute at.", ""]
    reference = (
        f"{metric} {kinds['reference_loss']:.4g} (the highest L* of the kinds at C={kinds['reference_budget']:.3g})"
    )
    lines += ["", f"Compute each kind's frontier needs for {reference}:", ""]
    lines += ["| kind | compute C | x least | 95% CI |", "|---|---|---|---|"]
    for kind in names:
        compute, ratio, ci = _compute_cells(kinds["compute_for_reference"].get(kind))
        lines.append(f"| {kind} | {compute} | {ratio} | {ci} |")
    for kind, k in kinds["kinds"].items():
        rows = spread_table(k["seed_spread"])
        if rows:
            lines += ["", f"Seed-to-seed spread of {kind}'s optima (its intervals resample whole seeds):", "", *rows]
    return lines + [""]


def _loss_cell(kind: dict, budget: float) -> str:
    optimum = next((o for o in kind["optima"] if o["budget"] == budget), None)
    if optimum is None:
        return "-"
    spread = next((s["loss"] for s in kind["seed_spread"] or [] if s["budget"] == budget), None)
    return f"{optimum['loss']:.4g}" + (f" ({spread['min']:.4g} to {spread['max']:.4g})" if spread else "")


def draw_kinds_frontier(new_figure, bundle):
    """Each kind's optimal FVU against compute, its seed range as error bars, its law and band."""
    if not bundle.kinds:
        return None
    from matplotlib import colormaps

    fig, ax = new_figure(6.5, 4.5)
    colours = colormaps["tab10"](np.arange(len(bundle.kinds)) % 10)
    for colour, f in zip(colours, bundle.kinds):
        c, loss = np.array([o.budget for o in f.optima]), np.array([o.loss for o in f.optima])
        spread = {s["budget"]: s["loss"] for s in f.record["seed_spread"] or []}
        lo = [loss[i] - spread[b]["min"] if b in spread else 0.0 for i, b in enumerate(c)]
        hi = [spread[b]["max"] - loss[i] if b in spread else 0.0 for i, b in enumerate(c)]
        ax.errorbar(c, loss, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="o", color=colour, ms=4, capsize=2)
        law = f.laws["loss"]
        if law is None:
            continue
        grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 100)
        ax.plot(grid, law(grid), "-", color=colour, lw=1, label=f"{f.kind}: C^{law.exponent:.3f}")
        band = f.samples["loss"].band(grid)
        if band is not None:
            ax.fill_between(grid, *band, color=colour, alpha=0.15)
    ax.set(
        xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="optimal FVU L*", title=TITLES["kinds_frontier"]
    )
    ax.legend(fontsize=7)
    return fig


def draw_kinds_l0_ev(new_figure, bundle):
    """One panel per budget: every run's L0 against its explained variance (1 - FVU), a colour per kind."""
    if not bundle.kinds or "l0" not in bundle.kinds[0].runs.columns:
        return None
    from matplotlib import colormaps

    budgets = sorted({o.budget for f in bundle.kinds for o in f.optima})
    fig, axes = new_figure(4 * len(budgets), 3.8, ncols=len(budgets))
    axes = np.atleast_1d(axes)
    colours = colormaps["tab10"](np.arange(len(bundle.kinds)) % 10)
    for ax, budget in zip(axes, budgets):
        for colour, f in zip(colours, bundle.kinds):
            rows = f.runs[f.runs["budget"] == budget]
            ax.scatter(rows["l0"], 1 - rows["loss"], s=10 + 30 * (rows["n_features"] / f.runs["n_features"].max()),
                       color=colour, alpha=0.7, label=f.kind)  # fmt: skip
        ax.set(xlabel="L0 (active features per token)", ylabel="explained variance (1 - FVU)", title=f"C={budget:.2g}")
        ax.legend(fontsize=6)
    return fig
