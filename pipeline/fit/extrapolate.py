"""Extrapolation check: fit the laws without the largest budget and predict its optimum.

This is the test a scaling law exists for; the relative errors say how far to trust a
prediction one budget step beyond the sweep.
"""

import numpy as np

from pipeline.fit.optima import Optimum
from pipeline.fit.powerlaw import fit_power_law, fit_power_law_with_floor

MIN_BUDGETS = 4  # 3 to fit a law with a residual, 1 to predict


def _compare(predicted: float, actual: float) -> dict:
    return {
        "predicted": float(predicted),
        "actual": float(actual),
        "relative_error": float((predicted - actual) / actual),
    }


def extrapolation_check(optima: list[Optimum]) -> tuple[dict | None, str | None]:
    """Predicted vs measured N*, T*, lr*, L* at the largest budget; None and a warning with too few budgets.

    relative_error = (predicted - actual) / actual, signed.
    """
    if len(optima) < MIN_BUDGETS:
        return None, (
            f"extrapolation check skipped: {len(optima)} budget(s), it needs >= {MIN_BUDGETS} "
            "(fit on all but the largest, predict the largest)"
        )
    held, fitted = optima[-1], optima[:-1]
    c = np.array([o.budget for o in fitted])
    result = {"held_out_budget": held.budget, "n_fitted_budgets": len(fitted), "held_out_at_grid_edge": held.at_edge}
    for name in ("n_features", "tokens", "lr", "loss"):
        law = fit_power_law(c, np.array([getattr(o, name) for o in fitted]))
        result[name] = _compare(law(held.budget).item(), getattr(held, name))
    floored = fit_power_law_with_floor(c, np.array([o.loss for o in fitted]))
    result["loss_with_floor"] = None if floored is None else _compare(floored(held.budget).item(), held.loss)
    return result, None
