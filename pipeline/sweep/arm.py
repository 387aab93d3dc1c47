"""Running one arm of a sweep: train it, and record its row whether it succeeds or fails."""

import traceback
from pathlib import Path

from pipeline.coders.registry import SPARSITY_FIELD
from pipeline.config import CoderConfig, PipelineConfig, TrainConfig
from pipeline.models.loading import pick_device
from pipeline.store.activation_store import open_store
from pipeline.sweep.plan import Arm
from pipeline.sweep.results import read_row, run_dir, write_row
from pipeline.train.data import ActivationData
from pipeline.train.trainer import train_run

_DATA_CACHE: dict[tuple, ActivationData] = {}  # per process: arms that share a store read it once


def arm_configs(cfg: PipelineConfig, arm: Arm) -> tuple[CoderConfig, TrainConfig]:
    sparsity_field = SPARSITY_FIELD[arm.kind]
    sparsity = int(arm.sparsity) if sparsity_field == "k" else arm.sparsity
    coder = CoderConfig(**{**_fields(cfg.coder), "kind": arm.kind, "n_features": arm.n_features, sparsity_field: sparsity})
    train = TrainConfig(**{**_fields(cfg.train), "tokens": arm.tokens, "batch_size": arm.batch_size, "lr": arm.lr, "seed": arm.seed})
    return coder, train


def _fields(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(vars(node))


def activation_data(store_path: Path, hook: str, train: TrainConfig) -> ActivationData:
    device = pick_device(train.device)
    key = (str(store_path), hook, train.eval_tokens, str(device))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = ActivationData(open_store(store_path), hook, train, device)
    return _DATA_CACHE[key]


def run_arm(cfg: PipelineConfig, arm: Arm, hook: str, sweep_dir: Path, group: str) -> dict:
    """Trains the arm and writes its row; a failure is recorded in the row, never raised."""
    previous = read_row(sweep_dir, arm.run_id)
    attempts = (previous or {}).get("attempts", 0) + 1
    coder, train = arm_configs(cfg, arm)
    try:
        data = activation_data(Path(cfg.out_dir) / "store.zarr", hook, train)
        metrics = train_run(coder, train, data, run_dir(sweep_dir, arm.run_id), cfg.tracking, arm.run_id, group)
        return write_row(sweep_dir, arm, "done", attempts, metrics)
    except Exception as err:  # noqa: BLE001 - a failing arm must not stop the others
        print(f"sweep: arm {arm.run_id} failed: {err}", flush=True)
        detail = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return write_row(sweep_dir, arm, "failed", attempts, error=detail)
