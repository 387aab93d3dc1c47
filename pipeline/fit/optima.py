"""The loss-optimal width N*, tokens T*, learning rate lr* and loss L* of each compute budget.

IsoFLOP analysis: within one budget, each width's best loss over learning rates is found first
(a parabola in log lr), then the width whose best loss is lowest (a parabola in log N through the
points near the minimum). Everything works on integer-coded numpy arrays so the bootstrap can
recompute optima thousands of times cheaply.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.fit.runs import budget_label

LR_WINDOW = 3  # points around the lowest loss that the parabola in log lr goes through
# Same for log N. The vertex's precision grows with the squared spread of the points, and isoFLOP
# curves stay near-parabolic across a typical 7-width grid (64x), so all of such a grid is used.
WIDTH_WINDOW = 7
# A run whose loss is more than this multiple of the best on its curve diverged (too high an lr)
# or broke; a parabola through it would put the minimum far below every measured loss.
DIVERGED_RATIO = 2.0


@dataclass
class Vertex:
    """The minimum of a sampled curve y(x)."""

    x: float
    y: float
    fitted: bool  # True: a parabola vertex; False: the lowest sampled point
    coeffs: tuple[float, float, float] | None = None  # (c2, c1, c0) of y = c2 u^2 + c1 u + c0, u = x - centre
    centre: float = 0.0
    span: tuple[float, float] = (0.0, 0.0)  # x range of the points the parabola went through
    lowest_at_edge: bool = False  # the lowest sampled point is the first or last of the grid
    clamped: bool = False  # the parabola's vertex lay beyond the usable points and was moved to the last one
    n_diverged: int = 0  # points left out as diverged (y > DIVERGED_RATIO * lowest y)


def parabola_minimum(x, y, window: int) -> Vertex:
    """Vertex of a least-squares parabola through the `window` points around the lowest y.

    x must be ascending and distinct; diverged points are left out first. Falls back to the lowest
    point with fewer than 3 points or a curve that is not convex there. The vertex is clamped to
    the range of the points: beyond the grid a parabola is a guess, not a fit.
    """
    # Plain Python floats: with 3 to 7 points numpy's per-call overhead would dominate the bootstrap.
    x, y = np.asarray(x, float).tolist(), np.asarray(y, float).tolist()
    i = min(range(len(y)), key=y.__getitem__)
    edge = len(x) > 1 and i in (0, len(x) - 1)
    keep = [j for j in range(len(y)) if not y[j] > DIVERGED_RATIO * y[i]] if y[i] > 0 else list(range(len(y)))
    lowest = Vertex(x[i], y[i], False, lowest_at_edge=edge, n_diverged=len(y) - len(keep))
    if len(keep) < 3:
        return lowest
    w = min(window, len(keep))
    k = keep.index(i)
    lo = min(max(k - w // 2, 0), len(keep) - w)
    xs, ys = [x[j] for j in keep[lo : lo + w]], [y[j] for j in keep[lo : lo + w]]
    centre = sum(xs) / w  # centring keeps the normal equations well conditioned
    coeffs = _quadratic([v - centre for v in xs], ys)
    if coeffs is None or not coeffs[0] > 0:
        return lowest
    c2, c1, c0 = coeffs
    vertex = -c1 / (2 * c2) + centre
    x_min = min(max(vertex, x[keep[0]]), x[keep[-1]])
    u = x_min - centre
    return Vertex(
        x_min, c0 + c1 * u + c2 * u * u, True, coeffs, centre, (xs[0], xs[-1]), edge, x_min != vertex, lowest.n_diverged
    )


def _quadratic(u: list[float], y: list[float]) -> tuple[float, float, float] | None:
    """Least-squares (c2, c1, c0) of y = c2 u^2 + c1 u + c0, by Cramer's rule on the normal equations."""
    s0, s1, s2 = len(u), sum(u), sum(v * v for v in u)
    s3, s4 = sum(v**3 for v in u), sum(v**4 for v in u)
    t0, t1, t2 = sum(y), sum(a * b for a, b in zip(u, y)), sum(a * a * b for a, b in zip(u, y))

    def det(a, b, c):
        return (
            a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0])
        )

    rows = ((s4, s3, s2), (s3, s2, s1), (s2, s1, s0))
    d = det(*rows)
    if d == 0:
        return None
    rhs = (t2, t1, t0)
    cols = []
    for k in range(3):
        swapped = [tuple(rhs[r] if j == k else rows[r][j] for j in range(3)) for r in range(3)]
        cols.append(det(*swapped) / d)
    return cols[0], cols[1], cols[2]


@dataclass
class BudgetRuns:
    """The finished runs of one budget, with widths and learning rates coded as grid indices."""

    budget: float
    widths: np.ndarray  # distinct n_features, ascending
    lrs: np.ndarray  # distinct learning rates, ascending
    width_idx: np.ndarray  # per run: index into widths
    lr_idx: np.ndarray  # per run: index into lrs
    loss: np.ndarray  # per run
    ln_tokens: np.ndarray  # per run
    seed_idx: np.ndarray  # per run: index of its seed among the budget's distinct seeds (all 0 without a seed column)

    @classmethod
    def from_frame(cls, budget: float, rows: pd.DataFrame) -> "BudgetRuns":
        widths, width_idx = np.unique(rows["n_features"].to_numpy(float), return_inverse=True)
        lrs, lr_idx = np.unique(rows["lr"].to_numpy(float), return_inverse=True)
        seeds = rows["seed"].to_numpy() if "seed" in rows.columns else np.zeros(len(rows), int)
        return cls(
            budget,
            widths,
            lrs,
            width_idx,
            lr_idx,
            rows["loss"].to_numpy(float),
            np.log(rows["tokens"].to_numpy(float)),
            np.unique(seeds, return_inverse=True)[1],
        )

    def __len__(self) -> int:
        return len(self.loss)


def split_budgets(runs: pd.DataFrame) -> list[BudgetRuns]:
    """One BudgetRuns per distinct budget, ascending."""
    return [BudgetRuns.from_frame(float(b), rows) for b, rows in runs.groupby("budget", sort=True)]


@dataclass
class Optimum:
    """The loss-optimal point of one budget, with the per-width curve it came from (for plots)."""

    budget: float
    n_features: float
    tokens: float
    lr: float
    loss: float
    n_runs: int
    at_edge: bool  # N* is at (or clamped to) the smallest or largest width of the grid
    width_vertex: Vertex  # the isoFLOP fit in ln N
    widths: np.ndarray  # widths with finished runs
    width_loss: np.ndarray  # each width's best loss over learning rates
    width_lr: np.ndarray  # each width's best learning rate
    lr_fitted: bool  # lr* is a parabola vertex rather than the best sampled lr
    n_diverged: int = 0  # (width, lr) cells and widths left out of the parabolas as diverged

    def record(self) -> dict:
        """The JSON entry of this optimum."""
        return {
            "budget": self.budget,
            "n_features": self.n_features,
            "tokens": self.tokens,
            "lr": self.lr,
            "loss": self.loss,
            "n_runs": self.n_runs,
            "n_widths": len(self.widths),
            "at_grid_edge": self.at_edge,
            "n_method": "parabola" if self.width_vertex.fitted else "best point",
            "lr_method": "parabola" if self.lr_fitted else "best point",
            "n_diverged": self.n_diverged,
        }


def budget_optimum(runs: BudgetRuns, sample: np.ndarray | None = None) -> tuple[Optimum, list[str]]:
    """N*, T*, lr*, L* of one budget, from all its runs or from the run indices in `sample`.

    Repeated (width, lr) cells (seeds, or bootstrap duplicates) are averaged first.
    """
    idx = np.arange(len(runs)) if sample is None else sample
    nw, nl = len(runs.widths), len(runs.lrs)
    cell = runs.width_idx[idx] * nl + runs.lr_idx[idx]
    count = np.bincount(cell, minlength=nw * nl).reshape(nw, nl)
    total = np.bincount(cell, weights=runs.loss[idx], minlength=nw * nl).reshape(nw, nl)
    present = np.flatnonzero(count.sum(axis=1))
    ln_lrs = np.log(runs.lrs)

    lr_vertices = []
    for r in present:
        have = count[r] > 0
        lr_vertices.append(parabola_minimum(ln_lrs[have], total[r, have] / count[r, have], LR_WINDOW))
    widths = runs.widths[present]
    ln_w = np.log(widths)
    width_loss = np.array([v.y for v in lr_vertices])
    best = parabola_minimum(ln_w, width_loss, WIDTH_WINDOW)

    w_of_run = runs.width_idx[idx]
    ln_tok = (
        np.bincount(w_of_run, weights=runs.ln_tokens[idx], minlength=nw)[present]
        / np.bincount(w_of_run, minlength=nw)[present]
    )
    # Tokens follow from the width along a budget (T = C / flops_per_token(N)); a line in log-log
    # interpolates between the sampled widths.
    ln_t = float(np.polyval(np.polyfit(ln_w, ln_tok, 1), best.x)) if len(ln_w) > 1 else float(ln_tok[0])

    nearest = int(np.argmin(np.abs(ln_w - best.x)))
    lr_at = lr_vertices[nearest]
    have_lr = count[present[nearest]] > 0
    # A point that is not a fitted vertex is a grid value: report it exactly, not through exp(log).
    n_opt = float(np.exp(best.x)) if best.fitted else float(widths[nearest])
    lr_opt = (
        float(np.exp(lr_at.x))
        if lr_at.fitted
        else float(runs.lrs[have_lr][np.argmin(np.abs(ln_lrs[have_lr] - lr_at.x))])
    )
    opt = Optimum(
        runs.budget,
        n_opt,
        float(np.exp(ln_t)),
        lr_opt,
        float(best.y),
        len(idx),
        len(ln_w) < 3 or best.lowest_at_edge or best.clamped,
        best,
        widths,
        width_loss,
        np.exp([v.x for v in lr_vertices]),
        lr_at.fitted,
        sum(v.n_diverged for v in lr_vertices) + best.n_diverged,
    )
    return opt, _optimum_warnings(opt, lr_at, int(have_lr.sum()))


def _optimum_warnings(opt: Optimum, lr_at: Vertex, n_lrs: int) -> list[str]:
    label = budget_label(opt.budget)
    warnings = []
    if opt.n_runs < 3:
        warnings.append(f"{label}: only {opt.n_runs} finished run(s); its optimum rests on too few runs")
    if len(opt.widths) < 3:
        warnings.append(
            f"{label}: only {len(opt.widths)} width(s) finished (a parabola needs 3); "
            "N* is the best width, not a fitted minimum"
        )
    elif opt.at_edge:
        side = "smallest" if opt.n_features <= np.sqrt(opt.widths[0] * opt.widths[-1]) else "largest"
        warnings.append(
            f"{label}: the loss-optimal width is at the edge of the width grid ({side} width, "
            f"N={opt.n_features:.0f}); the true N* probably lies outside the grid"
        )
    width = f"N={opt.widths[np.argmin(np.abs(np.log(opt.widths / opt.n_features)))]:.0f}"
    if n_lrs < 3:
        warnings.append(
            f"{label}: only {n_lrs} learning rate(s) at {width} (a parabola needs 3); lr* is the best sampled lr"
        )
    elif lr_at.lowest_at_edge:
        warnings.append(
            f"{label}: the best learning rate at {width} is at the edge of the lr grid (lr={opt.lr:.3g}); "
            "the true lr* may lie outside it"
        )
    if opt.n_diverged:
        warnings.append(
            f"{label}: {opt.n_diverged} point(s) with a loss above {DIVERGED_RATIO:g}x the best of their curve "
            "were treated as diverged and left out of the parabolas"
        )
    return warnings


def find_optima(budgets: list[BudgetRuns]) -> tuple[list[Optimum], list[str]]:
    """The optimum of every budget, ascending in budget, and the warnings they raised."""
    optima, warnings = [], []
    for runs in budgets:
        opt, w = budget_optimum(runs)
        optima.append(opt)
        warnings += w
    return optima, warnings
