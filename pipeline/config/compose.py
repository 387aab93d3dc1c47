"""Composing a stage's configuration from the conf/ folder and Hydra overrides (key=value), then checking it."""

from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config.checks import check
from pipeline.config.schema import PipelineConfig, register_configs
from pipeline.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str]) -> PipelineConfig:
    """The configuration with `overrides` applied and every field checked, or ConfigError naming the bad field."""
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
        cfg = OmegaConf.to_object(node)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from err
    check(cfg)
    return cfg


def _one_line(err: Exception) -> str:
    """The error's first line, led by the field OmegaConf names (Hydra's own line says only 'Error merging')."""
    cause = err.__cause__ if getattr(err.__cause__, "full_key", None) else err
    first = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
    key = getattr(cause, "full_key", None)
    return f"{key}: {first}" if key else first


def sweep_name_override(override: str) -> str:
    """`sweep=NAME` is short for `sweep.name=NAME`: `sweep` is a group of fields, but a sweep is named most often."""
    return "sweep.name=" + override.split("=", 1)[1] if override.startswith("sweep=") else override
