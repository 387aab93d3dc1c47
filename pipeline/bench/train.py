"""Training-step benchmark: tokens/s and achieved TFLOP/s per coder kind against the matrix peak of the same run.

    python -m pipeline.bench.train [--steps 30] [--peers] [--skip-grid] [--skip-steps] [--profile]

A step is what the trainer does per batch: the loss under the training precision (bfloat16 autocast on CUDA), backward,
global-norm clipping, Adam and the coder's after-step. Steps run on random rows already on the device (no data
loading); each figure is the median of `--steps` timed steps after warm-up. FLOPs are each kind's analytic count (the
README's table), so "TFLOP/s" is comparable across kinds and tools. `--peers` times the same shapes through
EleutherAI's sparsify and SAELens, where installed. The grid part writes a store of random rows, then trains 8 arms
from it: fused in one pass over the data with the arms stacked into one batched coder (the default), fused without
stacking, and one after another; with the rows streamed from the store (`train.cache=none`) and with the default cache
(`auto`: read once into device memory). Before it, 8 tiny arms time the host's work per arm and step, stacked and one
by one. `--profile` adds, per case, the operators that take most of the step's device time (CPU time without a GPU), to
show where a kind's step goes. Without a GPU every shape is scaled down so the run takes a minute. The peers' steps
are in `pipeline.bench.peers`, the grid part in `pipeline.bench.grid`, the device and timer in `pipeline.bench.timing`.
"""

import argparse

import torch

from pipeline.bench.grid import grid_comparison, step_overhead
from pipeline.bench.options import at_least_one
from pipeline.bench.peers import peer, saelens_step, sparsify_step
from pipeline.bench.timing import CUDA, DEVICE, D, K, failure, matrix_peak, sync, timed
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.evaluate.metrics import FiringTracker
from pipeline.train.arm_run import autocast
from pipeline.train.host_memory import keep_freed_blocks
from pipeline.train.optimizer import adam, clipped_step, gradient_norm

CLT_LAYERS = 4  # layers of the CLT case
# (kind, n_features, batch): the shapes on a GPU, a small copy on CPU.
KINDS = ("relu", "jumprelu", "topk", "batchtopk")
CASES = (
    [(kind, n, batch) for kind in KINDS for n in (32768, 131072) for batch in (4096, 16384)]
    if CUDA
    else [(kind, n, 1024) for kind in KINDS for n in (2048, 8192)]
)
# One step each of a transcoder and a CLT (over CLT_LAYERS layers) of the first case's width.
LAYERED = [(kind, *CASES[0][1:]) for kind in ("transcoder", "clt")]


def own_step(kind: str, n_features: int, batch: int):
    """A closure running one trainer step of a fresh coder (as `ArmRun.step` takes it: the loss, its gradients,
    the clipped Adam step, the coder's own after-step and the firing history); its FLOPs per token."""
    keep_freed_blocks()  # as the trainer does
    layers = CLT_LAYERS if kind == "clt" else 1
    coder = build(AnyCoderConfig(kind=kind, n_features=n_features, k=K), D, layers).to(DEVICE).train()
    optimizer = adam(coder.parameters(), 1e-4)
    shape = (batch, layers, D) if kind == "clt" else (batch, D)
    x = torch.randn(shape, device=DEVICE)
    target = {"target": torch.randn(shape, device=DEVICE)} if coder.target_field else {}
    firing = FiringTracker(n_features, DEVICE)

    def step():
        with autocast(DEVICE, "auto"):
            parts, f = coder.loss(x, 1.0, **target)
        parts["loss"].backward()
        clipped_step(optimizer, gradient_norm(coder.parameters()), 1.0)
        coder.after_step()
        firing.update(f)

    return step, coder.flops_per_token()


def step_rows(steps: int, peers: bool, peak: float, cases=CASES) -> list[dict]:
    """Per case and tool, tokens/s, achieved TFLOP/s and their share of `peak`; printed as each is measured.

    A tool that cannot run a case holds why in `failed`; a peer without the kind has no row.
    """
    print(f"{'kind':10} {'N':>7} {'batch':>6} {'tool':9} {'tokens/s':>11} {'TFLOP/s':>8} {'of peak':>8}")
    rows = []
    for kind, n_features, batch in cases:
        step, flops = own_step(kind, n_features, batch)
        runs = [("pipeline", step)]
        if peers:
            runs += [
                (name, peer(make, kind, n_features, batch))
                for name, make in (("sparsify", sparsify_step), ("sae-lens", saelens_step))
            ]
        for tool, run in runs:
            row = {"kind": kind, "n_features": n_features, "batch": batch, "tool": tool}
            if run is not None and not isinstance(run, str):
                try:
                    rate = batch / timed(run, steps)
                except Exception as error:  # noqa: BLE001
                    run = failure(error)
            if isinstance(run, str):
                rows.append({**row, "failed": run})
                print(f"{kind:10} {n_features:>7} {batch:>6} {tool:9} {run}")
            elif run is not None:
                rows.append({**row, "tokens_s": rate, "tflops": rate * flops / 1e12, "of_peak": rate * flops / peak})
                print(
                    f"{kind:10} {n_features:>7} {batch:>6} {tool:9} {rate:>11,.0f} "
                    f"{rate * flops / 1e12:>8.3g} {rate * flops / peak:>8.0%}",
                    flush=True,
                )
        del step, runs
        if CUDA:
            torch.cuda.empty_cache()
    return rows


def step_profiles(steps: int, rows: int = 12) -> None:
    """Per case, the operators with the most self time over `steps` steps of this pipeline's step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    for kind, n_features, batch in CASES:
        step, _ = own_step(kind, n_features, batch)
        for _ in range(3):
            step()
        sync()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            sync()
        print(f"{kind} N {n_features} batch {batch}: operators by self time over {steps} steps")
        print(
            prof.key_averages().table(
                sort_by="self_device_time_total" if CUDA else "self_cpu_time_total", row_limit=rows
            ),
            flush=True,
        )
        del step, prof
        if CUDA:
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=at_least_one, default=30, help="timed steps per case (median reported)")
    parser.add_argument("--peers", action="store_true", help="also time EleutherAI's sparsify and SAELens")
    parser.add_argument("--skip-grid", action="store_true", help="leave out the fused-grid comparison")
    parser.add_argument("--skip-steps", action="store_true", help="leave out the per-kind step table")
    parser.add_argument("--profile", action="store_true", help="also list each case's costliest operators")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matrix_peak(args.steps)
    name = torch.cuda.get_device_name() if CUDA else "cpu"
    print(f"device {name}; matrix peak {peak / 1e12:.1f} TFLOP/s ({'bfloat16 8192^3' if CUDA else 'float32 1024^3'})")
    if not args.skip_steps:
        step_rows(args.steps, args.peers, peak)
    if args.profile:
        step_profiles(min(args.steps, 5))
    if not args.skip_grid:
        step_overhead(args.steps)
        for cache in ("none", "auto"):
            grid_comparison(cache)


if __name__ == "__main__":
    main()
