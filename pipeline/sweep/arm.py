"""Running a pack of a sweep's arms: train them fused, and record each one's row whether it succeeds or fails."""

import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.activations.loading import ActivationData, open_activation_data
from pipeline.activations.stream import StreamingActivationData
from pipeline.config import ModelConfig, PipelineConfig, TrainConfig
from pipeline.distributed.process_group import process_group
from pipeline.evaluate.splice import Splicer
from pipeline.layout import OutDir, SweepDir
from pipeline.models.loading import pick_device
from pipeline.store.activation_store import open_store
from pipeline.sweep.plan import Arm
from pipeline.sweep.results import read_row, write_row
from pipeline.train.arm_run import ArmSpec
from pipeline.train.trainer import train_grid

if TYPE_CHECKING:
    from pipeline.circuits.scorer import CircuitScorer

_DATA_CACHE: dict[tuple, tuple] = {}  # per process: arms that share a store read it (and load its model) once


def activation_data(
    store_path: Path, hook: str, cfg: PipelineConfig
) -> tuple[ActivationData | StreamingActivationData, Splicer | None, "CircuitScorer | None"]:
    """(data, splicer, circuit scorer) of the store for `cfg`'s arms, built once per process for all of them."""
    train = cfg.train
    device = pick_device(train.device)
    key = (
        str(store_path), hook, train.target_hook, tuple(train.layers), str(device), train.eval_tokens,
        train.splice_contexts, train.cache, train.shuffle_chunks, train.prefetch_chunks,
        tuple(train.trace_prompts), cfg.trace.batch_size, cfg.trace.max_feature_nodes, cfg.trace.offload,
        cfg.trace.max_n_logits, cfg.trace.desired_logit_prob,
    )  # fmt: skip
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        store = open_store(store_path)
        _DATA_CACHE[key] = (
            open_activation_data(store, hook, train, device),
            make_splicer(store, train, device),
            make_scorer(store, cfg, device),
        )
    return _DATA_CACHE[key]


def make_splicer(store, train: TrainConfig, device) -> Splicer | None:
    """A splicer when the store's model has a language-model head and splicing is on."""
    if train.splice_contexts <= 0 or not store.attrs["model"]["has_lm_head"]:
        return None
    return Splicer(store, train.splice_contexts, device)


def make_scorer(store, cfg: PipelineConfig, device) -> "CircuitScorer | None":
    """A `CircuitScorer` of the store's model when `train.trace_prompts` names prompts (checked before any work)."""
    if not cfg.train.trace_prompts:
        return None
    # circuit-tracer (and TransformerLens under it) take seconds to import: only sweeps that trace pay for them.
    from pipeline.circuits.attribution import TraceOptions
    from pipeline.circuits.scorer import CircuitScorer

    attrs = store.attrs["model"]
    model = ModelConfig(name=attrs["name"], revision=attrs["revision"], dtype=attrs["dtype"])
    return CircuitScorer(model, list(cfg.train.trace_prompts), TraceOptions.of(cfg.trace), device)


def _pack(arms: list[Arm], configs: list[PipelineConfig], hook: str, sweep_dir: Path, group: str):
    """The pack's ArmSpecs, and its data, splicer and scorer (arms of one pack read the same arrays)."""
    specs = [
        ArmSpec(c.coder, c.train, SweepDir(sweep_dir).run(a.run_id), a.run_id, group) for a, c in zip(arms, configs)
    ]
    return specs, *activation_data(OutDir(configs[0].out_dir).store, specs[0].train.hook or hook, configs[0])


def run_arms(arms: list[Arm], configs: list[PipelineConfig], hook: str, sweep_dir: Path, group: str) -> list[dict]:
    """Trains the arms (each with its configuration) as one fused grid and writes each one's row.

    Failures are recorded, never raised.
    """
    attempts = {arm.run_id: (read_row(sweep_dir, arm.run_id) or {}).get("attempts", 0) + 1 for arm in arms}
    try:
        specs, data, splicer, scorer = _pack(arms, configs, hook, sweep_dir, group)
        outcomes = train_grid(specs, data, configs[0].tracking, splicer, scorer)
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


def run_arms_on_rank(
    arms: list[Arm], configs: list[PipelineConfig], hook: str, sweep_dir: Path, group: str
) -> list[dict] | None:
    """`run_arms` as one rank of several (Ray Train workers): rank 0 runs it and returns its rows;
    the other ranks train the same arms beside it and write nothing."""
    with process_group(pick_device(configs[0].train.device)) as world:
        if world.main:
            return run_arms(arms, configs, hook, sweep_dir, group)
        specs, data, _, _ = _pack(arms, configs, hook, sweep_dir, group)
        train_grid(specs, data, configs[0].tracking)
        return None
