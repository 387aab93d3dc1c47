"""The resolved configuration of every arm of a sweep, written once beside the plan (`sweep/arms.json`).

A launched job is told only its arm ids and the out_dir; it reads each arm's whole configuration
from this file, so every machine trains an arm with exactly the configuration the sweep planned.
"""

import json
from dataclasses import asdict, replace
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.atomic import write_json_atomic
from pipeline.coders.registry import AnyCoderConfig, sparsity_setting
from pipeline.config import PipelineConfig
from pipeline.layout import SweepDir
from pipeline.sweep.plan import Arm


def arm_config(cfg: PipelineConfig, arm: Arm) -> PipelineConfig:
    """The sweep's configuration as `arm` trains it: its coder shape, arrays and steps, and an absolute out_dir."""
    shape = {"kind": arm.kind, "n_features": arm.n_features, **sparsity_setting(arm.kind, arm.sparsity)}
    # The sweep file names the arrays a transcoder or CLT reads; an SAE's hook falls back to train.hook.
    arrays = {"hook": arm.hook or cfg.train.hook, "target_hook": arm.target_hook, "layers": list(arm.layers)}
    steps = {"tokens": arm.tokens, "batch_size": arm.batch_size, "lr": arm.lr, "seed": arm.seed}
    return replace(
        cfg,
        out_dir=str(Path(cfg.out_dir).resolve()),  # jobs may start in another directory, or on another machine
        sweep=replace(cfg.sweep, arms=[arm.run_id]),
        coder=replace(cfg.coder, **shape, skip_connection=arm.skip_connection),
        train=replace(cfg.train, **arrays, **steps),
    )


def write_arm_configs(sweep_dir: Path, cfg: PipelineConfig, arms: list[Arm]) -> None:
    write_json_atomic(SweepDir(sweep_dir).arms, {arm.run_id: asdict(arm_config(cfg, arm)) for arm in arms})


def read_arm_configs(sweep_dir: Path, run_ids: list[str]) -> list[PipelineConfig]:
    """The configurations of the arms named by `run_ids`, in that order, typed and checked by the schema."""
    path = SweepDir(sweep_dir).arms
    saved = json.loads(path.read_text())
    missing = [r for r in run_ids if r not in saved]
    if missing:
        raise KeyError(f"sweep.arms: {missing[0]} is not an arm of {path}")
    schema = OmegaConf.structured(PipelineConfig)
    schema.coder = OmegaConf.structured(AnyCoderConfig)  # every kind's fields, as compose gives them
    return [OmegaConf.to_object(OmegaConf.merge(schema, saved[r])) for r in run_ids]
