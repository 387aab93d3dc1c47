"""A store's per-hook statistics: what each shard's record sums, and what the finished store records from the sums."""

import numpy as np
import torch


def sum_of_squares(rows: torch.Tensor) -> float:
    """sum ||row||^2: row norms in float32 (no float32 copy of the rows), summed in float64."""
    return float(torch.linalg.vector_norm(rows, dim=1, dtype=torch.float32).double().pow(2).sum())


def sum_of_rows(rows: torch.Tensor, chunk: int = 1024) -> list[float]:
    """sum of the rows, per dimension: each chunk of rows summed in float32, the chunks' sums in float64.

    Summing float16 rows straight into float64 is three times slower, and a chunk's float32 sum is
    already exact to about 1e-7 of its size.
    """
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    for part in rows.split(chunk):
        total += part.sum(0, dtype=torch.float32)
    return total.tolist()


def hook_stats(sum_sq_norm: float, row_sum: np.ndarray | None, n_rows: int) -> dict:
    """A hook's normalisation statistics and, given its sum of rows, its mean and mean-to-spread ratio.

    ||std|| is the norm of the per-dimension standard deviations, sqrt(E||x||^2 - ||mean||^2); a
    ratio ||mean|| / ||std|| well above 1 means every row shares one large direction, which leaves
    many features dead at initialisation unless the mean is subtracted (train.center).
    """
    stats = {"mean_sq_norm": sum_sq_norm / n_rows, "n_rows": n_rows}
    if row_sum is None:  # the shards' records predate the sums of rows
        return stats
    mean = row_sum / n_rows
    mean_norm = float(np.linalg.norm(mean))
    std_norm = max(stats["mean_sq_norm"] - mean_norm**2, 0.0) ** 0.5
    ratio = mean_norm / std_norm if std_norm else None  # every row alike: no spread to compare with
    return stats | {"mean": mean.tolist(), "mean_norm": mean_norm, "std_norm": std_norm, "mean_to_spread": ratio}
