"""The export stage through the command: which runs it selects, the folders and model cards it writes, and
what it refuses (exit 2, one line, nothing written)."""

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.sweep.results import gather

from unit.test_export_formats import _source

SOURCE = _source(["resid_post.1"], ["resid_post.1"])


def _run_folder(folder, kind: str = "topk", loss: float = 1.0, row: dict | None = None):
    """A finished run folder as training leaves it: coder/ (weights, config, source.json) and metrics.json."""
    torch.manual_seed(0)
    build(AnyCoderConfig(kind=kind, n_features=16, k=4), 8).save(folder / "coder", SOURCE)
    (folder / "metrics.json").write_text(json.dumps({"loss": loss, "fvu": 0.25, "l0": 4.0}))
    if row is not None:
        (folder / "result.json").write_text(json.dumps({"run_id": folder.name, "status": "done", "loss": loss, **row}))
    return folder


def _sweep(out_dir):
    """Three finished arms of two budgets (the lowest losses: b at 1e9, c at 2e9), and the fitted law."""
    for run_id, budget, loss in (("a", 1e9, 0.5), ("b", 1e9, 0.4), ("c", 2e9, 0.3)):
        row = {"budget": budget, "n_features": 16, "lr": 1e-3, "tokens": 1000, "kind": "topk"}
        _run_folder(out_dir / "sweep" / "runs" / run_id, loss=loss, row=row)
    gather(out_dir / "sweep")
    (out_dir / "fit").mkdir()
    (out_dir / "fit" / "fit.json").write_text(json.dumps({"n_opt": {"coefficient": 2.0, "exponent": 0.5}}))


def test_a_run_folder_exports_to_a_folder_saelens_loads_with_a_model_card(tmp_path, capsys):
    from sae_lens import SAE

    run = _run_folder(tmp_path / "topk_N16")
    assert main(["export", f"out_dir={tmp_path}", f"export.run={run}"]) == 0
    folder = tmp_path / "export" / "saelens" / "topk_N16"
    assert capsys.readouterr().out.strip() == f"export topk_N16: {folder}"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "cfg.json", "sae_weights.safetensors"]
    assert SAE.load_from_disk(folder).cfg.d_sae == 16
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelens\n") and "| fvu | 0.25 |" in card and "hf upload" in card
    assert "No scaling law" in card and "Trained alone" in card
    assert main(["export", f"out_dir={tmp_path}", f"export.run={run}"]) == 0  # done already: left as it is
    assert "exists; nothing to do" in capsys.readouterr().out


def test_select_best_takes_the_lowest_loss_arm_of_each_budget_and_all_takes_every_one(tmp_path, capsys):
    _sweep(tmp_path)
    out = tmp_path / "exported"
    assert main(["export", f"out_dir={tmp_path}", "export.format=sparsify", f"export.dir={out}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b", "c"]
    card = (out / "b" / "README.md").read_text()
    assert "| budget | 1e+09 |" in card and "N*(C) = 2 C^0.5" in card and "library_name: sparsify" in card
    everything = ["export.format=sparsify", f"export.dir={out}", "export.select=all"]
    assert main(["export", f"out_dir={tmp_path}", *everything]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "c"]
    assert main(["export", f"out_dir={tmp_path}", f"export.dir={tmp_path / 'one'}", "export.arms=[a]"]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["a"]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["export.format=onnx"], "export.format: expected one of saelens, circuit-tracer, sparsify, got 'onnx'"),
        (["export.format=sparsify", "export.run={relu}"], "export.format: sparsify holds top-k SAEs only, not a relu"),
        (["export.run={unfinished}"], "is not a finished run folder (no metrics.json)"),
        (["export.run={unrecorded}"], "coder has no source.json; it was written before runs recorded"),
        (["export.arms=[nope]"], "export.arms: "),
        (["export.select=all"], "export.select: no results table at"),
    ],
)
def test_refusals_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, overrides, says):
    relu = _run_folder(tmp_path / "relu", kind="relu")
    unfinished = _run_folder(tmp_path / "unfinished")
    (unfinished / "metrics.json").unlink()
    unrecorded = _run_folder(tmp_path / "unrecorded")
    (unrecorded / "coder" / "source.json").unlink()
    overrides = [o.format(relu=relu, unfinished=unfinished, unrecorded=unrecorded) for o in overrides]
    assert main(["export", f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_refused_run_among_several_stops_the_export_before_any_folder_is_written(tmp_path, capsys):
    _sweep(tmp_path)
    _run_folder(tmp_path / "sweep" / "runs" / "b", kind="relu")  # replaces arm b with a relu SAE
    assert main(["export", f"out_dir={tmp_path}", "export.format=sparsify"]) == 2
    assert "not a relu (b)" in capsys.readouterr().err and not (tmp_path / "export").exists()
