"""The fused-grid part of `python -m pipeline.bench.train`: wall time of a grid of arms, fused and not.

`grid_comparison` writes a store of random rows and, after a short untimed grid, trains 8 ReLU
arms from it fused and stacked, fused without stacking, and one after another; `step_overhead`
times the host's work per arm and step with tiny arms, stacked and one by one; `random_store`
writes the store of random float16 rows both use (or the rows of synthetic features the recipe benchmark gives it).
"""

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.activations.loading import open_activation_data
from pipeline.bench.timing import CUDA, DEVICE, D, timed
from pipeline.coders.registry import AnyCoderConfig
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import base_attrs
from pipeline.train.arm_run import ArmRun, ArmSpec
from pipeline.train.stack import build_stacks
from pipeline.train.trainer import train_grid


def grid_comparison(cache: str, arms: int = 8) -> dict:
    """Seconds of `arms` ReLU arms trained fused on one pass over a store (stacked and not), and one after another;
    printed, and returned with the shapes and the two speed-ups."""
    rows, n_features, batch = (2_097_152, 8192, 4096) if CUDA else (32_768, 512, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        store = random_store(Path(tmp) / "grid.zarr", rows)
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

        warm_up = [replace(s, train=replace(s.train, tokens=4 * batch)) for s in specs]
        timed_grids([warm_up], "-warm-up")  # the process's first grid pays once for what every later one reuses
        stacked = timed_grids([specs], "-stacked")
        unstacked = timed_grids([[replace(s, train=replace(s.train, stack_arms=False)) for s in specs]], "-fused")
        alone = timed_grids([[spec] for spec in specs], "-alone")
    result = {
        "arms": arms, "n_features": n_features, "batch": batch, "rows": rows, "cache": cache,
        "stacked_s": stacked, "unstacked_s": unstacked, "one_after_another_s": alone,
        "stacked_speedup": alone / stacked, "unstacked_speedup": alone / unstacked,
    }  # fmt: skip
    print(
        f"grid of {arms} relu arms (N {n_features}, batch {batch}, {rows:,} rows of a float16 store, "
        f"train.cache={cache}): "
        f"fused and stacked {stacked:.1f} s, fused without stacking {unstacked:.1f} s, "
        f"one after another {alone:.1f} s; "
        f"{alone / stacked:.1f}x stacked, {alone / unstacked:.1f}x without stacking"
    )
    return result


def step_overhead(steps: int, arms: int = 8) -> None:
    """Time per arm and step of `arms` tiny arms (d 32, N 64, batch 64), stacked and not: the host's work per step.

    Tiny arms leave the device idle, so this is what launching a step costs; a grid of small arms
    on a GPU runs at this rate.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = random_store(Path(tmp) / "tiny.zarr", 16384, d=32)
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


def random_store(path: Path, rows: int, d: int = D, draw=None):
    """A finalised float16 store of `rows` rows of hook resid_post.0: standard normal, or `draw(start, stop)`'s rows."""
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
        start, stop = store.layout.rows(shard)
        store.write_shard(shard, {"resid_post.0": draw(start, stop) if draw else torch.randn(stop - start, d)})
    store.finalize()
    return store
