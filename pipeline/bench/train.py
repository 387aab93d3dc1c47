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
show where a kind's step goes. Without a GPU every shape is scaled down so the run takes a minute.
"""

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.activations.loading import open_activation_data
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import base_attrs
from pipeline.train.arm_run import ArmRun, ArmSpec, autocast
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
D = 768 if CUDA else 128
# (kind, n_features, batch): the shapes on a GPU, a small copy on CPU.
CASES = (
    [("relu", 32768, 4096), ("relu", 32768, 16384), ("jumprelu", 32768, 4096), ("jumprelu", 32768, 16384),
     ("topk", 32768, 4096), ("topk", 32768, 16384), ("topk", 131072, 4096), ("topk", 131072, 16384)]
    if CUDA else [("relu", 2048, 1024), ("jumprelu", 2048, 1024), ("topk", 2048, 1024), ("topk", 8192, 1024)]
)  # fmt: skip
K = 32


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(step, n: int) -> float:
    """Median seconds per call of `step` over `n` calls, after three warm-up calls."""
    for _ in range(3):
        step()
    times = []
    for _ in range(n):
        _sync()
        start = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matrix_peak(steps: int) -> float:
    """FLOP/s of a square matrix product in the training precision (bfloat16 on CUDA, float32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if CUDA else (1024, torch.float32)
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, steps)


def own_step(kind: str, n_features: int, batch: int):
    """A closure running one trainer step of a fresh coder; its FLOPs per token."""
    coder = build(AnyCoderConfig(kind=kind, n_features=n_features, k=K), D).to(DEVICE).train()
    optimizer = torch.optim.Adam(coder.parameters(), lr=1e-4, fused=CUDA)
    x = torch.randn(batch, D, device=DEVICE)

    def step():
        with autocast(DEVICE, "auto"):
            parts, _ = coder.loss(x, 1.0)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        coder.after_step()

    return step, coder.flops_per_token()


def sparsify_step(kind: str, n_features: int, batch: int):
    """One step of sparsify's TopK SparseCoder as its trainer runs it (its own bf16 autocast, Adam, unit decoder)."""
    if kind != "topk":
        return None
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D, SparseCoderConfig(num_latents=n_features, k=K), device=DEVICE)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, D, device=DEVICE)
    dead = torch.zeros(n_features, dtype=torch.bool, device=DEVICE)

    def step():
        out = sae(x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        sae.set_decoder_norm_to_unit_norm()

    return step


def saelens_step(kind: str, n_features: int, batch: int):
    """One step of SAELens' training SAE of the same kind as its trainer runs it (bf16 autocast, clipping, Adam)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": D, "d_sae": n_features, "device": str(DEVICE)}
    sae, coefficients = {
        "relu": lambda: (StandardTrainingSAE(StandardTrainingSAEConfig(**common)), {"l1": 5.0}),
        "jumprelu": lambda: (JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common)), {"l0": 5.0}),
        "topk": lambda: (TopKTrainingSAE(TopKTrainingSAEConfig(k=K, **common)), {}),
    }[kind]()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, D, device=DEVICE)

    step_input = TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            out = sae.training_forward_pass(step_input=step_input)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def step_table(steps: int, peers: bool, peak: float) -> None:
    print(f"{'kind':9} {'N':>7} {'batch':>6} {'tool':9} {'tokens/s':>11} {'TFLOP/s':>8} {'of peak':>8}")
    for kind, n_features, batch in CASES:
        step, flops = own_step(kind, n_features, batch)
        runs = [("pipeline", step)]
        if peers:
            runs += [
                (name, _peer(make, kind, n_features, batch))
                for name, make in (("sparsify", sparsify_step), ("sae-lens", saelens_step))
            ]
        for tool, run in runs:
            if isinstance(run, str):
                print(f"{kind:9} {n_features:>7} {batch:>6} {tool:9} {run}")
            elif run is not None:
                rate = batch / timed(run, steps)
                print(
                    f"{kind:9} {n_features:>7} {batch:>6} {tool:9} {rate:>11,.0f} "
                    f"{rate * flops / 1e12:>8.3g} {rate * flops / peak:>8.0%}",
                    flush=True,
                )
        del step, runs
        if CUDA:
            torch.cuda.empty_cache()


def step_profiles(steps: int, rows: int = 12) -> None:
    """Per case, the operators with the most self time over `steps` steps of this pipeline's step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if CUDA else [ProfilerActivity.CPU]
    for kind, n_features, batch in CASES:
        step, _ = own_step(kind, n_features, batch)
        for _ in range(3):
            step()
        _sync()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            _sync()
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


def _peer(make, kind: str, n_features: int, batch: int):
    """The peer's step, or why it cannot run here."""
    try:
        return make(kind, n_features, batch)
    except Exception as err:  # noqa: BLE001 - a peer that fails to build is reported, not fatal
        return f"failed: {type(err).__name__}: {err}"


def grid_comparison(cache: str, arms: int = 8) -> None:
    """Wall time of `arms` ReLU arms trained fused on one pass over a store, and one after another."""
    rows, n_features, batch = (2_097_152, 8192, 4096) if CUDA else (32_768, 512, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        store = _random_store(Path(tmp) / "grid.zarr", rows)
        cfg = TrainConfig(
            tokens=rows - 8192,
            batch_size=batch,
            eval_tokens=8192,
            splice_contexts=0,
            log_every=10**9,
            checkpoint_every=0,
            cache=cache,
            device=str(DEVICE),
        )
        specs = [
            ArmSpec(
                AnyCoderConfig(kind="relu", n_features=n_features, l1_coefficient=l1),
                replace(cfg, lr=lr),
                Path(tmp) / f"arm{i}",
                f"arm{i}",
                "bench",
            )
            for i, (lr, l1) in enumerate((lr, l1) for lr in (1e-4, 3e-4, 1e-3, 3e-3) for l1 in (1.0, 5.0))
        ][:arms]
        tracking = TrackingConfig(mode="disabled")

        def timed_grids(grids: list[list[ArmSpec]], tag: str) -> float:
            start = time.perf_counter()
            for grid in grids:
                grid = [replace(s, run_dir=s.run_dir.with_name(s.run_dir.name + tag)) for s in grid]
                train_grid(grid, open_activation_data(store, "resid_post.0", cfg, DEVICE), tracking)
            return time.perf_counter() - start

        stacked = timed_grids([specs], "-stacked")
        unstacked = timed_grids([[replace(s, train=replace(s.train, stack_arms=False)) for s in specs]], "-fused")
        alone = timed_grids([[spec] for spec in specs], "-alone")
    print(
        f"grid of {arms} relu arms (N {n_features}, batch {batch}, {rows:,} rows of a float16 store, "
        f"train.cache={cache}): "
        f"fused and stacked {stacked:.1f} s, fused without stacking {unstacked:.1f} s, "
        f"one after another {alone:.1f} s; "
        f"{alone / stacked:.1f}x stacked, {alone / unstacked:.1f}x without stacking"
    )


def step_overhead(steps: int, arms: int = 8) -> None:
    """Time per arm and step of `arms` tiny arms (d 32, N 64, batch 64), stacked and not: the host's work per step.

    Tiny arms leave the device idle, so this is what launching a step costs; a grid of small arms
    on a GPU runs at this rate.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = _random_store(Path(tmp) / "tiny.zarr", 16384, d=32)
        for kind in ("relu", "topk"):
            for stack in (True, False):
                cfg = TrainConfig(
                    tokens=8192,
                    batch_size=64,
                    eval_tokens=4096,
                    log_every=10**9,
                    checkpoint_every=0,
                    stack_arms=stack,
                    device=str(DEVICE),
                )
                data = open_activation_data(store, "resid_post.0", cfg, DEVICE)
                runs = {
                    i: ArmRun(
                        ArmSpec(
                            AnyCoderConfig(kind=kind, n_features=64, k=4),
                            replace(cfg, lr=1e-4 * (i + 1)),
                            Path(tmp) / f"{kind}{stack}{i}",
                            "a",
                            "g",
                        ),
                        data,
                        TrackingConfig(mode="disabled"),
                    )
                    for i in range(arms)
                }
                per_arm = _time_grid_steps(build_stacks(runs), data, steps) / arms
                print(
                    f"host work per arm and step, {arms} tiny {kind} arms "
                    f"{'stacked' if stack else 'one by one'}: {per_arm * 1e3:.2f} ms",
                    flush=True,
                )


def _time_grid_steps(stacks: list, data, steps: int) -> float:
    """Median seconds of one step of every stack, after warm-up (see `timed`)."""
    batches = list(data.batches(64, steps + 3, 0))  # timed() takes 3 warm-up steps, then `steps`
    position = iter(range(steps + 3))

    def grid_step():
        step = next(position)
        for stack in stacks:
            stack.step(batches[step], step)

    return timed(grid_step, steps)


def _random_store(path: Path, rows: int, d: int = D):
    rows_per_context = 128
    contexts_per_shard = min(1024, rows // rows_per_context)
    attrs = base_attrs(
        model={"name": "random", "revision": "", "dtype": "float32", "n_layers": 1, "d_model": d, "has_lm_head": False},
        dataset={
            "source": "random",
            "name": "",
            "subset": "",
            "split": "train",
            "seed": 0,
            "context_len": rows_per_context,
            "paths": [],
        },
        hooks=["resid_post.0"],
        layout={
            "n_contexts": rows // rows_per_context,
            "context_len": rows_per_context,
            "rows_per_context": rows_per_context,
            "contexts_per_shard": contexts_per_shard,
            "drop_bos": False,
        },
        codec={"dtype": "float16", "codec": "none", "contexts_per_chunk": 64},
    )
    store = ActivationStore.create(path, attrs, d)
    for shard in range(store.layout.n_shards):
        store.write_shard(shard, {"resid_post.0": torch.randn(store.layout.rows_per_shard, d)})
    store.finalize()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case (median reported)")
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
        step_table(args.steps, args.peers, peak)
    if args.profile:
        step_profiles(min(args.steps, 5))
    if not args.skip_grid:
        step_overhead(args.steps)
        for cache in ("none", "auto"):
            grid_comparison(cache)


if __name__ == "__main__":
    main()
