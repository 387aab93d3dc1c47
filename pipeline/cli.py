"""The `pipeline` command: one subcommand per stage, each configured by Hydra overrides (key=value)."""

import dataclasses
import sys
from dataclasses import dataclass

from pipeline.coders.registry import register_schema
from pipeline.config import PipelineConfig, compose
from pipeline.config.docs import listing
from pipeline.errors import ConfigError
from pipeline.stages import run_stage


@dataclass(frozen=True)
class Stage:
    summary: str  # what the stage does and where it writes
    groups: tuple[str, ...]  # the PipelineConfig fields and groups the stage reads, which its --help lists


_TRAIN = ("out_dir", "model", "coder", "train", "launcher", "ray", "tracking")
STAGES = {
    "harvest": Stage(
        "tokenize the data set and write the model's activations into <out_dir>/store.zarr",
        ("out_dir", "model", "data", "harvest", "store", "ray"),
    ),
    "train": Stage(
        "train one coder on the store into <out_dir>/train/<kind>_N<n_features>_lr<lr>_s<seed>_<config hash>", _TRAIN
    ),
    "sweep": Stage(
        "plan and run the arms of sweeps/<sweep.name>.yaml into <out_dir>/sweep/results.parquet",
        (*_TRAIN, "sweep", "dry_run"),
    ),
    "fit": Stage(
        "fit the scaling laws of a results table into <out_dir>/fit/ (fit.json, report.md, plots)",
        ("out_dir", "fit", "sweep", "tracking"),
    ),
    "verify": Stage(
        "check every byte of every complete shard of <out_dir>/store.zarr against its checksums; exit 2 if any differs",
        ("out_dir",),
    ),
    "export": Stage(
        "write trained dictionaries for SAELens, circuit-tracer or sparsify into <out_dir>/export/<format>/<run id>",
        ("out_dir", "export"),
    ),
    "trace": Stage(
        "attribution graphs of prompts through a trained CLT or transcoder set (circuit-tracer) into <out_dir>/trace",
        ("out_dir", "model", "trace"),
    ),
    "run": Stage(
        "harvest, sweep and fit in order, then print the fitted laws",
        tuple(f.name for f in dataclasses.fields(PipelineConfig)),
    ),
}

USAGE = "usage: pipeline {" + ",".join(STAGES) + "} [--help] [key=value ...]"


def print_help(stage: str | None, overrides: list[str]) -> None:
    if stage is None:
        print(USAGE + "\n\nStages:")
        for name, s in STAGES.items():
            print(f"  {name:<8} {s.summary}")
        print("\n`pipeline STAGE --help` shows the configuration that stage reads, with each field's meaning.")
        return
    print(f"pipeline {stage}: {STAGES[stage].summary}\n\nConfiguration (override any field with key=value):\n")
    print(listing(compose(overrides), STAGES[stage].groups))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    register_schema()  # the `coder` node's fields come from the kinds, above the configuration layer
    if not argv or argv[0] in ("-h", "--help"):
        print_help(None, [])
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    try:
        if stage not in STAGES:
            raise ConfigError(f"{stage}: unknown stage; expected one of {', '.join(STAGES)}")
        overrides = [a for a in rest if a not in ("-h", "--help")]
        if len(overrides) != len(rest):
            print_help(stage, overrides)
            return 0
        run_stage(stage, compose(overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
