"""Running a pack of a sweep's arms: train them fused, and record each one's row whether it succeeds or fails."""

import traceback
from pathlib import Path

from pipeline.coders.registry import AnyCoderConfig, sparsity_setting
from pipeline.config import CoderConfig, PipelineConfig, TrainConfig
from pipeline.models.loading import pick_device
from pipeline.store.activation_store import open_store
from pipeline.sweep.plan import Arm
from pipeline.sweep.results import read_row, run_dir, write_row
from pipeline.activations.loading import ActivationData, open_activation_data
from pipeline.evaluate.splice import Splicer
from pipeline.activations.stream import StreamingActivationData
from pipeline.train.trainer import ArmSpec, train_grid

_DATA_CACHE: dict[tuple, tuple] = {}  # per process: arms that share a store read it (and load its model) once


def arm_configs(cfg: PipelineConfig, arm: Arm) -> tuple[CoderConfig, TrainConfig]:
    shape = {"kind": arm.kind, "n_features": arm.n_features, "skip_connection": arm.skip_connection}
    coder = AnyCoderConfig(**{**_fields(cfg.coder), **shape, **sparsity_setting(arm.kind, arm.sparsity)})
    # The sweep file names the arrays a transcoder or CLT reads; an SAE's hook falls back to train.hook.
    arrays = {"hook": arm.hook or cfg.train.hook, "target_hook": arm.target_hook, "layers": list(arm.layers)}
    steps = {"tokens": arm.tokens, "batch_size": arm.batch_size, "lr": arm.lr, "seed": arm.seed}
    train = TrainConfig(**{**_fields(cfg.train), **arrays, **steps})
    return coder, train


def _fields(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(vars(node))


def activation_data(store_path: Path, hook: str, train: TrainConfig) -> tuple[ActivationData | StreamingActivationData, Splicer | None]:
    device = pick_device(train.device)
    key = (
        str(store_path), hook, train.target_hook, tuple(train.layers), str(device), train.eval_tokens,
        train.splice_contexts, train.cache, train.shuffle_chunks, train.prefetch_chunks,
    )  # fmt: skip
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        store = open_store(store_path)
        _DATA_CACHE[key] = (open_activation_data(store, hook, train, device), make_splicer(store, train, device))
    return _DATA_CACHE[key]


def make_splicer(store, train: TrainConfig, device) -> Splicer | None:
    """A splicer when the store's model has a language-model head and splicing is on."""
    if train.splice_contexts <= 0 or not store.attrs["model"]["has_lm_head"]:
        return None
    return Splicer(store, train.splice_contexts, device)


def run_arms(cfg: PipelineConfig, arms: list[Arm], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    """Trains the arms as one fused grid and writes each one's row; failures are recorded, never raised."""
    attempts = {arm.run_id: (read_row(sweep_dir, arm.run_id) or {}).get("attempts", 0) + 1 for arm in arms}
    specs = []
    for arm in arms:
        coder, train = arm_configs(cfg, arm)
        specs.append(ArmSpec(coder, train, run_dir(sweep_dir, arm.run_id), arm.run_id, group))
    try:
        data, splicer = activation_data(Path(cfg.out_dir) / "store.zarr", specs[0].train.hook or hook, specs[0].train)
        outcomes = train_grid(specs, data, cfg.tracking, splicer)
    except Exception as err:  # noqa: BLE001 - a failing pack must not stop the other packs
        outcomes = [err] * len(arms)
    rows = []
    for arm, outcome in zip(arms, outcomes):
        if isinstance(outcome, Exception):
            print(f"sweep: arm {arm.run_id} failed: {outcome}", flush=True)
            detail = f"{type(outcome).__name__}: {outcome}\n{''.join(traceback.format_exception(outcome, limit=3))}"
            rows.append(write_row(sweep_dir, arm, "failed", attempts[arm.run_id], error=detail))
        else:
            rows.append(write_row(sweep_dir, arm, "done", attempts[arm.run_id], outcome))
    return rows
