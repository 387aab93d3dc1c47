"""A store's per-hook statistics: what each shard's record sums, and what the finished store records from the sums."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_CHUNK = 1024  # rows summed in float32 at once
_PARALLEL_BYTES = 1 << 24  # shards above this size are summed on several cores


def _float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows (bfloat16 as its uint16 bits) as float32 values."""
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32, copy=False)


def shard_sums(stored: np.ndarray, dtype: str) -> tuple[float, list[float]]:
    """(sum ||row||^2, the sum of the rows per dimension) of a shard's stored rows: each 1,024 rows summed in
    float32, those sums in float64, which agrees with a float64 sum to about 1e-7 of its size. A shard of more
    than 16 MiB is summed in parts on several cores (numpy releases the GIL), added up in one order.

    numpy, not torch: the store computes these on threads it keeps, and a thread that has run torch's parallel
    operations keeps OpenMP threads of its own, which on a machine of few cores slows every parallel torch
    operation of the process after it (a 1 MiB product, five times, on 2 cores) for as long as it lives.
    """
    parts = min(8, os.cpu_count() or 1) if stored.nbytes > _PARALLEL_BYTES else 1
    rows = -(-len(stored) // (parts * _CHUNK)) * _CHUNK  # whole chunks a part, so the sums' order is the same
    pieces = [stored[start : start + rows] for start in range(0, len(stored), rows)]
    if len(pieces) == 1:  # starting threads would cost a fifth of summing a small shard
        sums = [_sums(pieces[0], dtype)]
    else:
        with ThreadPoolExecutor(len(pieces)) as pool:
            sums = list(pool.map(_sums, pieces, [dtype] * len(pieces)))
    return sum(sq for sq, _ in sums), np.sum([total for _, total in sums], axis=0).tolist()


def _sums(stored: np.ndarray, dtype: str) -> tuple[float, np.ndarray]:
    sum_sq, total = 0.0, np.zeros(stored.shape[1], np.float64)
    for start in range(0, len(stored), _CHUNK):
        rows = _float32(stored[start : start + _CHUNK], dtype)
        sum_sq += float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64))
        total += rows.sum(0)
    return sum_sq, total


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
