"""`python -m pipeline.bench all`: every figure of the speed targets in one process, one table, one JSON file.

In this order: the matrix peak; the harvest (bare forward pass, the store's write, a plain Zarr write of
the same rows, harvest) of GPT-2 small with random weights; training steps of every SAE kind at the
targets' shapes, with EleutherAI's sparsify and SAELens on the same shapes where installed; one
transcoder and one CLT step; the sparse kinds' kernel choices against their alternatives
(`pipeline.bench.kernels`); the fused grid of 8 arms streamed from a store, stacked, fused without
stacking and one after another. Each target is a ratio of two figures of this run, so a busy or
different machine moves both sides. Without a GPU every shape is scaled down (a rehearsal).
"""

import platform
import time
from pathlib import Path

import torch

from pipeline.atomic import write_json_atomic
from pipeline.bench import harvest
from pipeline.bench.grid import grid_comparison
from pipeline.bench.kernels import kernel_rows
from pipeline.bench.timing import CUDA, matrix_peak
from pipeline.bench.train import LAYERED, step_rows

# `pipeline harvest` overrides of the harvest part: the README's H100 settings on a GPU, a small copy on CPU.
HARVEST = ["model.name=random:gpt2", "harvest.hooks=[resid_pre.6]", "tracking.mode=disabled"] + (
    ["model.dtype=bfloat16", "data.context_len=1024", "harvest.batch_contexts=64", "harvest.contexts_per_shard=256"]
    if CUDA
    else ["data.context_len=128", "harvest.batch_contexts=8", "harvest.contexts_per_shard=8"]
)
DENSE_OF_PEAK = 0.6  # dense relu and jumprelu at batch 4096: share of the matrix peak
SPARSE_OVER_PEERS = 2.0  # topk and batchtopk: tokens/s over the faster peer's, at every shape
GRID_SPEEDUP = 6.0  # 8 arms fused and stacked from the store against one after another
HARVEST_OF_SLOWER = 0.9  # harvest against the slower of the bare forward pass and the plain Zarr write
STORE_OF_PLAIN = 0.8  # the store's write against the plain Zarr write of the same rows


def run(steps: int, out: Path | None) -> dict:
    """Measures everything, prints the table and writes the figures as JSON to `out` (when given)."""
    started = time.perf_counter()
    torch.manual_seed(0)
    peak = matrix_peak(steps)
    figures = {
        "device": torch.cuda.get_device_name() if CUDA else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "steps_timed": steps,
        "matrix_peak_tflops": peak / 1e12,
        "harvest": harvest.measure(HARVEST),
    }
    figures["steps"] = step_rows(steps, True, peak) + step_rows(steps, False, peak, LAYERED)
    figures["kernels"] = kernel_rows(steps)
    figures["grid"] = grid_comparison("none")
    figures["targets"] = targets(figures)
    figures["wall_s"] = time.perf_counter() - started
    print_table(figures)
    if out is not None:
        write_json_atomic(out, figures)
    return figures


def targets(figures: dict) -> list[dict]:
    """Each target's ratio in this run, its threshold and whether it is met (a step that failed has ratio 0)."""
    h, grid = figures["harvest"], figures["grid"]
    found = [
        ("harvest / slower of forward and plain Zarr", h["harvest_of_slower"], HARVEST_OF_SLOWER),
        ("store write / plain Zarr write", h["store_of_plain"], STORE_OF_PLAIN),
        (f"grid of {grid['arms']} stacked / one after another", grid["stacked_speedup"], GRID_SPEEDUP),
    ]
    own = [r for r in figures["steps"] if r["tool"] == "pipeline"]
    for r in own:
        case = f"{r['kind']} N {r['n_features']} batch {r['batch']}"
        if r["kind"] in ("relu", "jumprelu") and r["batch"] == 4096:
            found.append((f"{case}: of matrix peak", r.get("of_peak", 0.0), DENSE_OF_PEAK))
        peers = [
            p["tokens_s"]
            for p in figures["steps"]
            if p["tool"] != "pipeline" and "tokens_s" in p and _case(p) == _case(r)
        ]
        if r["kind"] in ("topk", "batchtopk") and peers:
            found.append((f"{case}: over the faster peer", r.get("tokens_s", 0.0) / max(peers), SPARSE_OVER_PEERS))
    return [{"what": what, "ratio": ratio, "target": target, "met": ratio >= target} for what, ratio, target in found]


def _case(row: dict) -> tuple:
    return row["kind"], row["n_features"], row["batch"]


def print_table(figures: dict) -> None:
    """One table: the run's setting, every figure, then every target's ratio."""
    h, grid = figures["harvest"], figures["grid"]
    lines = [
        ("device", f"{figures['device']}, torch {figures['torch']}"),
        ("matrix peak", f"{figures['matrix_peak_tflops']:.1f} TFLOP/s"),
        (f"harvest: bare forward ({h['model']}, {h['hooks'][0]})", f"{h['forward_tokens_s']:,.0f} tokens/s"),
        ("harvest: store write", f"{h['store_write_tokens_s']:,.0f} tokens/s, {h['store_write_gb_s']:.2f} GB/s"),
        ("harvest: plain Zarr write", f"{h['plain_zarr_tokens_s']:,.0f} tokens/s, {h['plain_zarr_gb_s']:.2f} GB/s"),
        (
            "harvest: plain Zarr write flushed to disk",
            f"{h['plain_flushed_gb_s']:.2f} GB/s, {h['store_of_flushed_plain']:.2f} x it for the store",
        ),
        (
            "harvest: harvest",
            f"{h['harvest_tokens_s']:,.0f} tokens/s, {h['harvest_of_slower_flushed']:.2f} x the slower of the "
            "forward pass and the flushed plain write",
        ),
    ]
    for r in figures["steps"]:
        what = f"step: {r['kind']} N {r['n_features']} batch {r['batch']}, {r['tool']}"
        lines.append(
            (what, r["failed"])
            if "failed" in r
            else (what, f"{r['tokens_s']:,.0f} tokens/s, {r['tflops']:.3g} TFLOP/s, {r['of_peak']:.0%} of peak")
        )
    for r in figures["kernels"]:
        timed = ", ".join(f"{name} {ms:.3g} ms" for name, ms in r.get("ms", {}).items())
        lines.append((f"kernel: {r['what']}", r.get("failed", timed)))
    lines += [
        (
            f"grid: {grid['arms']} relu arms N {grid['n_features']} batch {grid['batch']}, streamed",
            f"stacked {grid['stacked_s']:.1f} s, fused {grid['unstacked_s']:.1f} s, "
            f"one after another {grid['one_after_another_s']:.1f} s",
        ),
        *((f"target: {t['what']}", f"{t['ratio']:.2f} (>= {t['target']:g}) {'met' if t['met'] else 'NOT met'}")
          for t in figures["targets"]),
        ("wall time", f"{figures['wall_s']:.0f} s"),
    ]  # fmt: skip
    width = max(len(what) for what, _ in lines)
    print(f"\n{'figure':<{width}}  value")
    for what, value in lines:
        print(f"{what:<{width}}  {value}")
