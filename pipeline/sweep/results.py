"""The sweep's results: one JSON row per arm in its run folder, gathered into `sweep/results.parquet`.

Each arm writes only its own file, so concurrent arms never touch each other's rows; the table is
rebuilt from those files and replaced atomically.
"""

import json
from pathlib import Path

import pandas as pd

from pipeline.atomic import write_atomic, write_json_atomic
from pipeline.layout import SweepDir
from pipeline.sweep.plan import Arm

RESULT = "result.json"
METRIC_COLUMNS = (
    "loss",
    "mse",
    "fvu",
    "l0",
    "dead_fraction",
    "dead_window_tokens",
    "flops_per_token",
    "delta_loss",
    "kl",
    # SAEBench's core set (README, Metrics): the name of each says which formula it uses
    "explained_variance",
    "explained_variance_legacy",
    "cossim",
    "l2_ratio",
    "relative_reconstruction_bias",
    "frac_alive",
    "freq_over_1_percent",
    "freq_over_10_percent",
    "max_decoder_cosine_sim",
    "average_max_decoder_cosine_sim",
    "clean_loss",
    "spliced_loss",
    "ablated_loss",
    "ablated_kl",
    "ce_loss_score",
    "kl_score",
    # circuit quality over train.trace_prompts (transcoding arms only; NaN for SAEs, which replace no MLP)
    "replacement_score",
    "completeness_score",
    "next_token_agreement",
)
COLUMNS = (
    "run_id", "status", "kind", "budget", "n_features", "d_in", "lr", "sparsity", "seed", "batch_size",
    "steps", "tokens", "flops", *METRIC_COLUMNS, "wall_time_s", "attempts", "checkpoint", "wandb_run_id", "error",
)  # fmt: skip


def read_row(sweep_dir: Path, run_id: str) -> dict | None:
    path = SweepDir(sweep_dir).run(run_id) / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def write_row(
    sweep_dir: Path, arm: Arm, status: str, attempts: int, metrics: dict | None = None, error: str = ""
) -> dict:
    metrics = metrics or {}
    folder = SweepDir(sweep_dir).run(arm.run_id)
    row = {
        "run_id": arm.run_id,
        "status": status,
        "kind": arm.kind,
        "budget": arm.budget,
        "n_features": arm.n_features,
        "d_in": arm.d_in,
        "lr": arm.lr,
        "sparsity": arm.sparsity,
        "seed": arm.seed,
        "batch_size": arm.batch_size,
        "steps": metrics.get("steps", arm.steps),
        "tokens": metrics.get("tokens", 0),
        "flops": metrics.get("flops", 0.0),
        **{k: float(metrics.get(k, float("nan"))) for k in METRIC_COLUMNS},
        "wall_time_s": metrics.get("wall_time_s", 0.0),
        "attempts": attempts,
        "checkpoint": str(folder / "coder") if status == "done" else "",
        "wandb_run_id": metrics.get("wandb_run_id", ""),
        "error": error,
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / RESULT, row)
    return row


def gather(sweep_dir: Path) -> pd.DataFrame:
    """Rebuilds `results.parquet` from every arm's row."""
    folders = SweepDir(sweep_dir)
    rows = [json.loads(p.read_text()) for p in sorted(folders.runs.glob(f"*/{RESULT}"))]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_atomic(folders.results, lambda tmp: table.to_parquet(tmp, index=False))
    return table
