"""The dictionary a trace replaces the model's MLPs with: the runs `trace.*` names (the export's own selection),
each checked to be a transcoder or CLT of `model.name`, and the name its folder and feature files go by.

Several runs make one transcoder set (single-layer transcoders, one per layer; `pipeline.export.combine`).
Without `trace.run`, `trace.runs` or `trace.arms`, the sweep's best dictionary is traced: the
lowest-loss finished arm of its largest budget.
"""

from dataclasses import dataclass

from pipeline.circuits.transcoders import Member, check
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.export.combine import combined, set_id
from pipeline.export.runs import Run, chosen_runs


@dataclass
class Dictionary:
    id: str  # the run id, or the transcoder set's id (`set_id`)
    runs: list[Run]  # in layer order for a set

    @property
    def members(self) -> list[Member]:
        return [(run.coder, run.source) for run in self.runs]


def _field(cfg: PipelineConfig) -> str:
    return next((f"trace.{name}" for name in ("run", "runs", "arms") if getattr(cfg.trace, name)), "trace.select")


def selected_dictionary(cfg: PipelineConfig) -> Dictionary:
    """The checked dictionary, or ConfigError naming the field that chose the run at fault."""
    field = _field(cfg)
    runs = chosen_runs(cfg.out_dir, cfg.trace, "trace")
    if field == "trace.select":
        runs = runs[-1:]  # the best arm of each budget, in budget order
    for run in runs:
        name = run.source["model"]["name"]
        if name != cfg.model.name:
            raise ConfigError(
                f"{field}: {run.id} is a dictionary of {name}, not of model.name={cfg.model.name}; "
                f"trace it with model.name={name}"
            )
        check(run.coder, run.source, run.id, field)
    if len(runs) == 1:
        return Dictionary(runs[0].id, runs)
    runs = combined(runs, field)
    return Dictionary(set_id(runs), runs)
