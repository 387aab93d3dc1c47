"""Power laws of compute: y = coefficient * C**exponent, and the loss frontier with a floor.

Exponents are signed throughout: a quantity that falls with compute (loss, learning rate) has a
negative exponent.
"""

from dataclasses import dataclass

import numpy as np

MAX_DECAY = 5.0  # steepest loss decay the floored frontier may fit (|exponent|); far beyond any measured law
MIN_DECAY = 1e-4  # shallowest: at b -> 0 the power law turns into a second constant, confounded with E


@dataclass
class PowerLaw:
    """y = exp(ln_coefficient) * C**exponent."""

    ln_coefficient: float  # kept in logs: coefficients of laws in C ~ 1e15 under- or overflow easily
    exponent: float

    @property
    def coefficient(self) -> float:
        return float(np.exp(self.ln_coefficient))

    def __call__(self, c) -> np.ndarray:
        return np.exp(self.ln_coefficient + self.exponent * np.log(np.asarray(c, float)))


@dataclass
class FloorLaw:
    """y = irreducible + exp(ln_coefficient) * C**exponent."""

    irreducible: float
    ln_coefficient: float
    exponent: float

    @property
    def coefficient(self) -> float:
        return float(np.exp(self.ln_coefficient))

    def __call__(self, c) -> np.ndarray:
        return self.irreducible + np.exp(self.ln_coefficient + self.exponent * np.log(np.asarray(c, float)))


def fit_power_law(c: np.ndarray, y: np.ndarray) -> PowerLaw | None:
    """Least squares of ln y on ln C; None with fewer than 2 distinct budgets."""
    c, y = np.asarray(c, float), np.asarray(y, float)
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0) & (y > 0)
    x, ly = np.log(c[ok]), np.log(y[ok])
    if len(np.unique(x)) < 2:
        return None
    mean = x.mean()  # centring makes the slope and intercept uncorrelated and well conditioned
    slope, intercept = np.polyfit(x - mean, ly, 1)
    return PowerLaw(float(intercept - slope * mean), float(slope))


def fit_power_law_with_floor(c: np.ndarray, y: np.ndarray) -> FloorLaw | None:
    """y = E + A * C**b with 0 <= E < min(y), A > 0 and -MAX_DECAY <= b < 0.

    Least squares in relative error (E + A C^b - y) / y, which is the log residual to first order,
    so every budget weighs alike as in the plain power law. For a fixed b the model is linear in
    (E, A), so b is found by a search on a grid refined twice (variable projection): no starting
    point to choose, no local minimum to fall into, and fast enough to repeat in every bootstrap draw.
    None with fewer than 3 budgets or when no decay (A > 0) fits better than a constant.
    """
    c, y = np.asarray(c, float), np.asarray(y, float)
    ok = np.isfinite(c) & np.isfinite(y) & (c > 0) & (y > 0)
    c, y = c[ok], y[ok]
    if len(np.unique(c)) < 3:
        return None
    mean = float(np.log(c).mean())  # C is measured from its geometric mean so C^b stays near 1
    x, top = np.log(c) - mean, float(y.min()) * (1 - 1e-9)
    grid = -np.geomspace(MIN_DECAY, MAX_DECAY, 120)
    for _ in range(3):
        sse, floor, amp = _profile(grid, x, y, top)
        i = int(np.argmin(sse))
        lo, hi = grid[min(i + 1, len(grid) - 1)], grid[max(i - 1, 0)]
        best = (grid[i], floor[i], amp[i])
        grid = np.linspace(lo, hi, 41)
    b, floor, amp = (float(v) for v in best)
    if not amp > 0:
        return None
    return FloorLaw(floor, float(np.log(amp)) - b * mean, b)


def _profile(b: np.ndarray, x: np.ndarray, y: np.ndarray, top: float):
    """For each exponent in b: the best (E, A) in the box 0 <= E <= top, A >= 0, and its error.

    The minimum of a convex quadratic over a box lies at the free optimum or on an edge, so all
    candidates are computed and the best feasible one is kept.
    """
    u = np.broadcast_to(1.0 / y, (len(b), len(y)))  # the floor's column, weighted by 1/y
    v = np.exp(np.outer(b, x)) / y  # the power law's column
    suu, suv, svv = (u * u).sum(1), (u * v).sum(1), (v * v).sum(1)
    su, sv = u.sum(1), v.sum(1)
    det = suu * svv - suv**2
    with np.errstate(divide="ignore", invalid="ignore"):
        free = ((svv * su - suv * sv) / det, (suu * sv - suv * su) / det)
        at_zero = (np.zeros_like(b), np.maximum(sv / svv, 0))
        at_top = (np.full_like(b, top), np.maximum((sv - top * suv) / svv, 0))
        flat = (np.clip(su / suu, 0, top), np.zeros_like(b))
    best_sse = np.full(len(b), np.inf)
    best_e, best_a = np.zeros(len(b)), np.zeros(len(b))
    for e, a in (free, at_zero, at_top, flat):
        feasible = np.isfinite(e) & np.isfinite(a) & (e >= 0) & (e <= top) & (a >= 0)
        sse = (((e[:, None] * u + a[:, None] * v) - 1.0) ** 2).sum(1)
        better = feasible & (sse < best_sse)
        best_sse[better], best_e[better], best_a[better] = sse[better], e[better], a[better]
    return best_sse, best_e, best_a
