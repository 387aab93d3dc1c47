"""Seeds in the fit: resampling that draws whole seeds, and the seed-to-seed spread of each budget's optimum.

Runs of one seed share an initialisation draw and a data order, so their errors are correlated: a
resample of single runs would treat S seeds' runs as S times as many independent points and give
intervals too narrow. Drawing seeds with replacement, then runs within each drawn seed (a two-level
bootstrap), keeps that correlation, so the intervals include the spread between seeds.
"""

import numpy as np

from pipeline.fit.optima import BudgetRuns, budget_optimum

SPREAD_FIELDS = ("n_features", "tokens", "lr", "loss")  # optimum fields whose spread over seeds is reported


def n_seeds(runs: BudgetRuns) -> int:
    return int(runs.seed_idx.max()) + 1 if len(runs) else 0


def resample(runs: BudgetRuns, rng: np.random.Generator) -> np.ndarray:
    """Run indices of one bootstrap draw: runs with replacement, within seeds drawn with replacement."""
    if n_seeds(runs) < 2:
        return rng.integers(0, len(runs), len(runs))
    members = [np.flatnonzero(runs.seed_idx == s) for s in range(n_seeds(runs))]
    drawn = [members[s] for s in rng.integers(0, len(members), len(members))]
    return np.concatenate([m[rng.integers(0, len(m), len(m))] for m in drawn])


def seed_spread(budgets: list[BudgetRuns]) -> list[dict] | None:
    """Per budget, the optimum of each seed's runs alone: min, max and standard deviation over seeds of
    N*, T*, lr* and L*; None when no budget has runs of more than one seed."""
    if all(n_seeds(b) < 2 for b in budgets):
        return None
    spread = []
    for runs in budgets:
        optima = [budget_optimum(runs, np.flatnonzero(runs.seed_idx == s))[0] for s in range(n_seeds(runs))]
        record = {"budget": runs.budget, "n_seeds": len(optima)}
        for name in SPREAD_FIELDS:
            values = np.array([getattr(o, name) for o in optima])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            record[name] = {"min": float(values.min()), "max": float(values.max()), "std": std}
        spread.append(record)
    return spread
