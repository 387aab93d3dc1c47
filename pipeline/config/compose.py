"""Composing a stage's configuration from the conf/ folder and Hydra overrides (key=value)."""

from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config.schema import PipelineConfig, register_configs
from pipeline.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
