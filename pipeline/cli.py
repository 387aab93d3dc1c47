"""The `pipeline` command: one subcommand per stage, each configured by Hydra overrides (key=value)."""

import sys

from omegaconf import OmegaConf

from pipeline.coders.registry import register_schema
from pipeline.config import compose
from pipeline.errors import ConfigError

STAGES = {
    "harvest": "tokenize the data set and write the model's activations into <out_dir>/store.zarr",
    "train": "train one coder on the store into <out_dir>/train/<coder.kind>_N<coder.n_features>",
    "sweep": "plan and run the arms of sweeps/<sweep.name>.yaml into <out_dir>/sweep/results.parquet",
    "fit": "fit the scaling laws of a results table into <out_dir>/fit/ (fit.json, report.md, plots)",
    "run": "harvest, sweep and fit in order, then print the fitted laws",
}

USAGE = "usage: pipeline {" + ",".join(STAGES) + "} [--help] [key=value ...]"


def print_help(stage: str | None, overrides: list[str]) -> None:
    if stage is None:
        print(USAGE + "\n\nStages:")
        for name, text in STAGES.items():
            print(f"  {name:<8} {text}")
        print("\n`pipeline STAGE --help` shows the configuration that stage would run with.")
        return
    print(f"pipeline {stage}: {STAGES[stage]}\n\nConfiguration (override any field with key=value):\n")
    print(OmegaConf.to_yaml(OmegaConf.structured(compose(overrides))))


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
        from pipeline.stages import run_stage

        run_stage(stage, compose(overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
