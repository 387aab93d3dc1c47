"""The export stage: every selected run checked against the format, then one folder per run, each created
atomically (weights, config and model card, or nothing). With `export.combine` the selected runs are checked to
fit in one circuit-tracer transcoder set, and written as that one folder."""

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.atomic import create_dir_atomic
from pipeline.coders.folding import fold
from pipeline.config import PipelineConfig
from pipeline.export.card import model_card, set_card
from pipeline.export.combine import combined, set_id
from pipeline.export.formats import FORMATS
from pipeline.export.runs import Run, selected_runs
from pipeline.layout import OutDir


def export_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.export.dir) if cfg.export.dir else OutDir(cfg.out_dir).root / "export" / cfg.export.format


def run_export(cfg: PipelineConfig) -> list[Path]:
    """Writes each selected run in `export.format`; returns the folders written. Refuses before writing any."""
    fmt = FORMATS[cfg.export.format]
    runs = selected_runs(cfg)
    for run in runs:
        fmt.check(run)
    written = []
    for name, fill in _folders(cfg, runs, fmt):
        folder = export_dir(cfg) / name
        if folder.exists():
            print(f"export {name}: {folder} exists; nothing to do")
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        create_dir_atomic(folder, fill)
        print(f"export {name}: {folder}")
        written.append(folder)
    return written


def _folders(cfg: PipelineConfig, runs: list[Run], fmt) -> list[tuple[str, Callable[[Path], None]]]:
    """(folder name, what fills it) of each folder the export writes: one per run, or one set of them all."""
    if cfg.export.combine:
        runs = combined(runs)
        name = set_id(runs)
        return [(name, partial(_fill_set, name=name, runs=runs, fmt=fmt))]
    fit_json = OutDir(cfg.out_dir).fit / "fit.json"
    fit = json.loads(fit_json.read_text()) if fit_json.exists() else None
    return [(run.id, partial(_fill, run=run, fmt=fmt, fit=fit if run.row else None)) for run in runs]


def _fill(folder: Path, run: Run, fmt, fit: dict | None) -> None:
    folder.mkdir()
    fmt.write(run, fold(run.coder, run.source), folder)
    (folder / "README.md").write_text(model_card(run, fmt.LIBRARY, fmt.usage(run), fit))


def _fill_set(folder: Path, name: str, runs: list[Run], fmt) -> None:
    folder.mkdir()
    fmt.write_set([(run, fold(run.coder, run.source)) for run in runs], folder)
    (folder / "README.md").write_text(set_card(name, runs, fmt.LIBRARY, fmt.usage(runs[0])))
