"""The `pipeline` command: one subcommand per stage, each configured by Hydra overrides (key=value)."""

import sys
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import PipelineConfig, register_configs
from pipeline.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

STAGES = {
    "harvest": "tokenize the data set and write the model's activations into <out_dir>/store.zarr",
    "train": "train one coder on the store into <out_dir>/train/<coder.kind>_N<coder.n_features>",
    "sweep": "plan and run the arms of sweeps/<sweep.name>.yaml into <out_dir>/sweep/results.parquet",
    "fit": "fit the scaling laws of a results table into <out_dir>/fit/ (fit.json, report.md, plots)",
    "run": "harvest, sweep and fit in order, then print the fitted laws",
}

USAGE = "usage: pipeline {" + ",".join(STAGES) + "} [--help] [key=value ...]"


def compose(overrides: list[str]) -> PipelineConfig:
    """The configuration with `overrides` applied, or ConfigError naming the bad override."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"{bad[0]}: expected an override of the form key=value")
    overrides = [sweep_name_override(o) for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            node = hydra_compose(config_name="config", overrides=overrides)
        return OmegaConf.to_object(node)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from err


def sweep_name_override(override: str) -> str:
    """`sweep=NAME` is short for `sweep.name=NAME`: `sweep` is a group of fields, but a sweep is named most often."""
    return "sweep.name=" + override.split("=", 1)[1] if override.startswith("sweep=") else override


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
