"""Which run folders an export (or a trace) reads (`export.run`, `export.runs`, `export.arms`, `export.select`), each
loaded and checked.

A run folder is finished when it holds `metrics.json` (written last); its `coder/` folder holds the
weights, the config and `source.json`, what it was trained on, so no store is needed.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.coders.base import CONFIG, SOURCE, WEIGHTS, Coder
from pipeline.coders.registry import load
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.fit.runs import finished_runs
from pipeline.layout import METRICS, OutDir
from pipeline.sweep.results import RESULT


@dataclass
class Run:
    """A finished run: its coder, what it was trained on, its metrics, and its sweep row if it is a sweep's arm."""

    folder: Path
    coder: Coder
    source: dict
    metrics: dict
    row: dict | None

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def transcodes(self) -> bool:
        """Whether it predicts other arrays than it reads (a transcoder or CLT)."""
        return self.source["targets"] != self.source["inputs"]


def load_run(folder: Path, field: str) -> Run:
    """The finished run in `folder`; ConfigError naming `field` if it is not one."""
    coder_dir = folder / "coder"
    if not (folder / METRICS).exists():
        raise ConfigError(f"{field}: {folder} is not a finished run folder (no {METRICS}); train it to the end first")
    for name in (WEIGHTS, CONFIG, SOURCE):
        if not (coder_dir / name).exists():
            raise ConfigError(
                f"{field}: {coder_dir} has no {name}; it was written before runs recorded what they were trained on, "
                "or is damaged: train the run again"
            )
    row = folder / RESULT
    return Run(
        folder,
        load(coder_dir),
        json.loads((coder_dir / SOURCE).read_text()),
        json.loads((folder / METRICS).read_text()),
        json.loads(row.read_text()) if row.exists() else None,
    )


def selected_runs(cfg: PipelineConfig) -> list[Run]:
    """The runs the export configuration names, all loaded, or ConfigError before anything is written."""
    return chosen_runs(cfg.out_dir, cfg.export, "export")


def chosen_runs(out_dir: str, node, prefix: str) -> list[Run]:
    """The runs a configuration node (`prefix`: export or trace) names with its run, runs, arms and select fields."""
    if node.run:
        return [load_run(Path(node.run), f"{prefix}.run")]
    if node.runs:
        return [load_run(Path(folder), f"{prefix}.runs") for folder in node.runs]
    sweep = OutDir(out_dir).sweep
    ids = list(node.arms) or _from_results(sweep.results, node.select, prefix)
    return [load_run(sweep.run(run_id), f"{prefix}.arms" if node.arms else f"{prefix}.select") for run_id in ids]


def _from_results(results: Path, select: str, prefix: str) -> list[str]:
    """The run ids of the finished arms in the results table: all, or the lowest-loss arm of each budget."""
    if not results.exists():
        raise ConfigError(
            f"{prefix}.select: no results table at {results}; run the sweep, or name a folder in {prefix}.run"
        )
    done, _ = finished_runs(pd.read_parquet(results), str(results))
    if select == "best":
        done = done.loc[done.groupby("budget")["loss"].idxmin()]
    return list(done.sort_values(["budget", "loss"])["run_id"])
