"""What the training benchmarks share: the device, the width and k of their coders, and the step timer.

`CUDA`, `DEVICE`, the input width `D` (768 on a GPU, 128 on CPU) and `K`, the active latents per row of the
TopK cases, are fixed at import; `timed` is the median of timed calls after warm-up that every figure of
`python -m pipeline.bench.train` comes from, `failure` what a row holds instead when a step fails, and
`matrix_peak` the matrix product its TFLOP/s are set against.
"""

import statistics
import time

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
D = 768 if CUDA else 128
K = 32
# Seconds of timed calls after which a case stops (once it has three): the slowest cases, a peer's step at the
# largest shape, then take seconds rather than a minute, and the suite fits one call of the GPU host.
CASE_S = 3.0


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def failure(error: Exception) -> str:
    """One line saying how a step failed, for the table: a step that fails on this device is a finding of the
    run, not its end."""
    return f"failed: {type(error).__name__}: {error}".splitlines()[0]


def timed(step, n: int) -> float:
    """Median seconds per call of `step` over `n` calls after three warm-up calls; past the third, no more once
    the timed calls have taken CASE_S."""
    for _ in range(3):
        step()
    times = []
    while len(times) < n and (len(times) < 3 or sum(times) < CASE_S):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matrix_peak(steps: int) -> float:
    """FLOP/s of a square matrix product in the training precision (bfloat16 on CUDA, float32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if CUDA else (1024, torch.float32)
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, steps)
