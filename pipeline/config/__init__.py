"""The bottom layer: every stage's configuration schema, its checks, and composing it from conf/ and overrides."""

from pipeline.config.checks import check, checked
from pipeline.config.compose import CONF_DIR, compose
from pipeline.config.schema import (
    CoderConfig,
    DataConfig,
    ExportConfig,
    FitConfig,
    HarvestConfig,
    LauncherConfig,
    ModelConfig,
    PipelineConfig,
    RayConfig,
    StoreConfig,
    SweepConfig,
    TraceConfig,
    TrackingConfig,
    TrainConfig,
    register_configs,
)

__all__ = [
    "CONF_DIR", "CoderConfig", "DataConfig", "ExportConfig", "FitConfig", "HarvestConfig", "LauncherConfig",
    "ModelConfig", "PipelineConfig", "RayConfig", "StoreConfig", "SweepConfig", "TraceConfig", "TrackingConfig",
    "TrainConfig", "compose", "check", "checked", "register_configs",
]  # fmt: skip
