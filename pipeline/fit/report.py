"""PNG plots of the fits, report.md, which links them and lists the numbers and warnings, and the law table."""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fit import circuit_laws, kinds_report
from pipeline.fit.dead import measured_runs
from pipeline.fit.joint import joint_loss, joint_points
from pipeline.fit.metric_laws import report_lines
from pipeline.fit.optima import Optimum

TITLES = {  # plot (file <name>.png) -> its title in report.md
    "loss_vs_tokens": "Loss vs tokens",
    "isoflop": "IsoFLOP curves",
    "frontier": "Loss frontier",
    "optima": "Optimal N, T, lr",
    "dead_features": "Dead features",
    "joint_nk": "Joint L(N, k)",
    **kinds_report.TITLES,
    "circuit_scores": circuit_laws.TITLE,
}


def write_plots(bundle, out: Path) -> list[str]:
    """Draw every plot the fit supports into `out`; returns the file names written."""
    # Agg canvases on bare Figures: no display needed, and no pyplot state shared with the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def new_figure(width: float, height: float, ncols: int = 1):
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        return fig, fig.subplots(1, ncols)

    drawn = []
    for name, draw in (
        ("loss_vs_tokens", _loss_vs_tokens),
        ("isoflop", _isoflop),
        ("frontier", _frontier),
        ("optima", _optima),
        ("dead_features", _dead),
        ("joint_nk", _joint),
        ("kinds_frontier", kinds_report.draw_kinds_frontier),
        ("kinds_l0_ev", kinds_report.draw_kinds_l0_ev),
        ("circuit_scores", circuit_laws.draw_circuit_scores),
    ):
        fig = draw(new_figure, bundle)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        drawn.append(f"{name}.png")
    return drawn


def _colours(n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](np.linspace(0.0, 0.9, max(n, 1)))


def _loss_vs_tokens(new_figure, bundle):
    """Each width's best loss (over lr, seeds averaged) against its tokens: a line per width, and
    per budget a grey isoFLOP curve through its widths."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    cells = bundle.runs.groupby(["n_features", "budget", "lr"], as_index=False)[["loss", "tokens"]].mean()
    best = cells.loc[cells.groupby(["n_features", "budget"])["loss"].idxmin()]
    norm = LogNorm(best["n_features"].min(), max(best["n_features"].max(), best["n_features"].min() * 1.01))
    cmap = colormaps["viridis"]
    fig, ax = new_figure(7, 4.5)
    for _, line in best.groupby("budget"):
        line = line.sort_values("tokens")
        ax.plot(line["tokens"], line["loss"], "-", color="0.75", lw=0.8, zorder=1)
    for width, line in best.groupby("n_features"):
        if len(line) > 1:
            line = line.sort_values("tokens")
            ax.plot(line["tokens"], line["loss"], "-", color=cmap(norm(width)), lw=1, zorder=2)
    points = ax.scatter(best["tokens"], best["loss"], c=best["n_features"], cmap=cmap, norm=norm, s=14, zorder=3)
    ax.plot(
        [o.tokens for o in bundle.optima],
        [o.loss for o in bundle.optima],
        "k*",
        ms=9,
        zorder=4,
        label="optimum per budget",
    )
    fig.colorbar(points, ax=ax, label="features N")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens trained",
        ylabel="loss (best lr)",
        title="Loss vs tokens per width (grey: one budget)",
    )
    ax.legend(fontsize=7)
    return fig


def _isoflop(new_figure, bundle):
    """Loss against width along each budget, with the parabola that located N*."""
    fig, ax = new_figure(6.5, 4.5)
    for colour, opt in zip(_colours(len(bundle.optima)), bundle.optima):
        ax.plot(opt.widths, opt.width_loss, "o", color=colour, ms=4, label=f"C={opt.budget:.2g}")
        v = opt.width_vertex
        if v.coeffs is not None:
            u = np.linspace(v.span[0], v.span[1], 50) - v.centre
            ax.plot(np.exp(u + v.centre), np.polyval(v.coeffs, u), "-", color=colour, lw=1)
        ax.plot(opt.n_features, opt.loss, "*", color=colour, ms=10, mec="k")
    ax.set(xscale="log", yscale="log", xlabel="features N", ylabel="loss (best lr)", title="IsoFLOP curves")
    ax.legend(fontsize=6)
    return fig


def _compute_grid(optima: list[Optimum]) -> np.ndarray:
    c = np.array([o.budget for o in optima])
    return np.geomspace(c.min() / 1.5, c.max() * 1.5, 100)


def _frontier(new_figure, bundle):
    """L*(C) with the plain power law (and its band) and the law with a floor."""
    law = bundle.laws["loss"]
    if law is None:
        return None
    c, grid = np.array([o.budget for o in bundle.optima]), _compute_grid(bundle.optima)
    fig, ax = new_figure(6.5, 4.5)
    ax.plot(c, [o.loss for o in bundle.optima], "ko", label="L* per budget")
    ax.plot(grid, law(grid), "C0-", label=f"A C^{law.exponent:.3f}")
    band = bundle.samples["loss"].band(grid)
    if band is not None:
        ax.fill_between(grid, *band, color="C0", alpha=0.2, label="95% band")
    if bundle.floor is not None:
        ax.plot(
            grid, bundle.floor(grid), "C3--", label=f"{bundle.floor.irreducible:.3g} + A C^{bundle.floor.exponent:.3f}"
        )
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="optimal loss L*", title="Loss frontier")
    ax.legend(fontsize=7)
    return fig


def _optima(new_figure, bundle):
    """N*, T*, lr* against C with their power laws and bootstrap bands."""
    if bundle.laws["n_features"] is None:
        return None
    c, grid = np.array([o.budget for o in bundle.optima]), _compute_grid(bundle.optima)
    fig, axes = new_figure(13, 4, ncols=3)
    for ax, field, label in zip(axes, ("n_features", "tokens", "lr"), ("N*", "T*", "lr*")):
        law = bundle.laws[field]
        ax.plot(c, [getattr(o, field) for o in bundle.optima], "ko")
        ax.plot(grid, law(grid), "C0-", label=f"{label} ∝ C^{law.exponent:.3f}")
        band = bundle.samples[field].band(grid)
        if band is not None:
            ax.fill_between(grid, *band, color="C0", alpha=0.2, label="95% band")
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=label, title=f"Optimal {label}")
        ax.legend(fontsize=7)
    return fig


def _dead(new_figure, bundle):
    """Dead fraction of every run against width, with the fit in ln N."""
    dead = bundle.fit.get("dead_features")
    if not dead or "cannot_measure" in dead:
        return None
    rows, _ = measured_runs(bundle.runs)
    fig, ax = new_figure(6.5, 4.5)
    ax.plot(rows["n_features"], rows["dead_fraction"], ".", color="0.6", label="runs")
    means = pd.DataFrame(dead["by_width"])
    ax.plot(means["n_features"], means["mean"], "ko", label="mean per width")
    grid = np.geomspace(rows["n_features"].min(), rows["n_features"].max(), 50)
    ax.plot(
        grid,
        dead["intercept"] + dead["slope"] * np.log(grid),
        "C3-",
        label=f"{dead['intercept']:.3g} + {dead['slope']:.3g} ln N",
    )
    ax.set(xscale="log", xlabel="features N", ylabel="dead fraction", title="Dead features")
    ax.legend(fontsize=7)
    return fig


def _joint(new_figure, bundle):
    """Best loss against width for each sparsity, with the joint L(N, k) law."""
    joint = bundle.fit.get("joint_nk")
    if not joint:
        return None
    _, pts = joint_points(bundle.finished)
    params = [joint[p] for p in ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")]
    ks = sorted(pts["sparsity"].unique())
    fig, ax = new_figure(6.5, 4.5)
    grid = np.geomspace(pts["n_features"].min(), pts["n_features"].max(), 50)
    for colour, k in zip(_colours(len(ks)), ks):
        p = pts[pts["sparsity"] == k]
        ax.plot(p["n_features"], p["loss"], "o", color=colour, ms=4, label=f"k={k:g}")
        ax.plot(grid, joint_loss(grid, np.full_like(grid, k), params), "-", color=colour, lw=1)
    ax.set(xscale="log", yscale="log", xlabel="features N", ylabel="best loss", title="Joint law L(N, k)")
    ax.legend(fontsize=7)
    return fig


def law_table(fit: dict, markdown: bool = False) -> str:
    """The fitted laws in C: quantity, coefficient, exponent and its 95% CI, as plain text or Markdown."""
    frontier = fit.get("loss_frontier") or {}
    laws = [("N*(C)", fit.get("n_opt")), ("T*(C)", fit.get("tokens_opt")), ("lr*(C)", fit.get("lr_opt"))]
    laws.append(("L*(C)", frontier.get("power_law")))
    floor = frontier.get("with_floor")
    if floor:
        laws.append((f"L*(C) - {floor['irreducible']:.4g}", floor))
    rows = [("quantity", "coefficient", "exponent", "95% CI")]
    for name, law in laws:
        if law is None:
            rows.append((name, "-", "-", _unfitted(fit.get("n_budgets", 0))))
            continue
        ci = law.get("ci95")
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        rows.append((name, f"{law['coefficient']:.4g}", f"{law['exponent']:.3f}", ci_text))
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([lines[0], "|---|---|---|---|", *lines[1:]])
    return "\n".join(f"{name:<20} {coefficient:>12} {exponent:>9}  {ci}" for name, coefficient, exponent, ci in rows)


def _unfitted(n_budgets: int) -> str:
    """Why a power law in C (2 parameters) has no numbers."""
    if n_budgets < 2:
        return f"cannot measure: {n_budgets} budget(s), it needs >= 2"
    return "cannot measure: fewer than 2 budgets with a finite positive value"


def write_report(fit: dict) -> str:
    """report.md's text: warnings first, then tables of optima and laws, then the plots."""
    lines = ["# Scaling-law fit", ""]
    analysis = fit.get("analysis") or {}
    lines += [
        (
            f"{fit['n_runs']} finished runs over {fit['n_budgets']} budgets from `{fit.get('source')}`; "
            f"analysed setting: kind={analysis.get('kind')}, sparsity={analysis.get('sparsity')} "
            f"({analysis.get('n_runs')} runs). {fit['convention']}."
        ),
        "",
    ]
    lines += ["## Warnings", ""] + ([f"- {w}" for w in fit["warnings"]] or ["None."]) + [""]
    if fit.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in fit["notes"]] + [""]
    lines += [
        "## Optimum per budget",
        "",
        "| budget C | N* | T* | lr* | L* | runs | at grid edge |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {o['budget']:.3g} | {o['n_features']:.4g} | {o['tokens']:.4g} | {o['lr']:.3g} | {o['loss']:.5g} "
        f"| {o['n_runs']} | {'yes' if o['at_grid_edge'] else 'no'} |"
        for o in fit["optima"]
    ]
    lines += ["", "## Laws in compute", "", law_table(fit, markdown=True), ""] + kinds_report.seed_section(fit)
    lines += _extrapolation_section(fit.get("extrapolation")) + _dead_section(fit.get("dead_features"))
    lines += _joint_section(fit.get("joint_nk")) + report_lines(fit.get("metric_laws") or {})
    lines += kinds_report.kinds_section(fit) + circuit_laws.report_lines(fit.get("circuit_scores"))
    lines += ["## Plots", ""] + [f"![{TITLES.get(Path(p).stem, p)}]({p})" for p in fit.get("plots", [])] + [""]
    return "\n".join(lines)


def _extrapolation_section(ex: dict | None) -> list[str]:
    if not ex:
        return []
    lines = [
        f"## Extrapolation to the largest budget ({ex['held_out_budget']:.3g}), fitted on {ex['n_fitted_budgets']}",
        "",
        "| quantity | predicted | measured | relative error |",
        "|---|---|---|---|",
    ]
    for name in ("n_features", "tokens", "lr", "loss", "loss_with_floor"):
        e = ex.get(name)
        if e:
            lines.append(f"| {name} | {e['predicted']:.4g} | {e['actual']:.4g} | {e['relative_error']:+.1%} |")
    return lines + [""]


def _dead_section(dead: dict | None) -> list[str]:
    if not dead:
        return []
    if "cannot_measure" in dead:
        return ["## Dead features", "", f"Cannot measure: {dead['cannot_measure']}.", ""]
    lines = [
        "## Dead features",
        "",
        (
            f"`{dead['form']}`: intercept {dead['intercept']:.4g}, slope {dead['slope']:.4g}, "
            f"R² {dead['r2']:.3f} over {dead['n_points']} runs."
        ),
    ]
    joint = dead.get("joint")
    if joint:
        terms = ", ".join(f"{k} {joint[k]:.4g}" for k in ("c_n", "c_t", "c_lr") if joint[k] is not None)
        lines.append(f"Jointly, `{joint['form']}`: {terms}, R² {joint['r2']:.3f}.")
    return lines + [""]


def _joint_section(joint: dict | None) -> list[str]:
    if not joint:
        return []
    params = ", ".join(f"{p} {joint[p]:.4g}" for p in ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta"))
    return [
        "## Joint law L(N, k)",
        "",
        (
            f"`{joint['form']}` (kind {joint['kind']}): {params}; "
            f"RMS log residual {joint['rmse_log']:.3g} over {joint['n_points']} points."
        ),
        "",
    ]
