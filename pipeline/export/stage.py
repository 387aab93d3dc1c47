"""The export stage: every selected run checked against the format, then one folder per run, each created
atomically (weights, config and model card, or nothing)."""

import json
from pathlib import Path

from pipeline.atomic import create_dir_atomic
from pipeline.config import PipelineConfig
from pipeline.export.card import model_card
from pipeline.export.folding import fold
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
    fit_json = OutDir(cfg.out_dir).fit / "fit.json"
    fit = json.loads(fit_json.read_text()) if fit_json.exists() else None
    written = []
    for run in runs:
        folder = export_dir(cfg) / run.id
        if folder.exists():
            print(f"export {run.id}: {folder} exists; nothing to do")
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        create_dir_atomic(folder, lambda tmp, run=run: _fill(tmp, run, fmt, fit if run.row else None))
        print(f"export {run.id}: {folder}")
        written.append(folder)
    return written


def _fill(folder: Path, run: Run, fmt, fit: dict | None) -> None:
    folder.mkdir()
    fmt.write(run, fold(run.coder, run.source), folder)
    (folder / "README.md").write_text(model_card(run, fmt.LIBRARY, fmt.usage(run), fit))
