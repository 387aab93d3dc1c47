"""A dictionary trained to the end on the synthetic store (the loop's parts are in tests/unit/test_train.py)."""

import json

from pipeline.coders.registry import AnyCoderConfig, load
from pipeline.config import TrackingConfig, TrainConfig
from pipeline.train.trainer import train_run

from conftest import SYNTHETIC_D as D
from unit.test_train import _data


def test_training_learns_the_synthetic_dictionary_and_writes_its_run(store, tmp_path):
    data = _data(store)
    coder_cfg = AnyCoderConfig(n_features=128, l1_coefficient=0.5)
    train_cfg = TrainConfig(tokens=120_000, batch_size=256, lr=3e-3)
    metrics = train_run(coder_cfg, train_cfg, data, tmp_path / "run", TrackingConfig(mode="disabled"), "r", "g")
    assert metrics["fvu"] < 0.25 and metrics["l0"] < 40
    assert metrics["steps"] == 468 and metrics["tokens"] == 468 * 256
    assert metrics["flops"] == metrics["tokens"] * 12 * D * 128
    assert metrics["dead_window_tokens"] == metrics["tokens"]  # shorter than the 10M default window
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["fvu"] == metrics["fvu"]
    coder = load(tmp_path / "run" / "coder")
    assert coder.n_features == 128


TRAIN_STAGE = ["coder.n_features=32", "train.tokens=2560", "train.batch_size=256", "train.eval_tokens=512",
               "train.splice_contexts=0", "train.device=cpu", "model.name=synthetic",
               "tracking.mode=disabled"]  # fmt: skip


def _train_stage(out_dir, *overrides) -> int:
    from pipeline.cli import main

    return main(["train", f"out_dir={out_dir}", *TRAIN_STAGE, *overrides])


def _files(folder) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_runs_differing_only_in_lambda_or_k_keep_both_and_a_rerun_changes_nothing(store, tmp_path, capsys):
    (tmp_path / "store.zarr").symlink_to(store.path)
    settings = [["coder.l1_coefficient=1.0"], ["coder.l1_coefficient=3.0"],
                ["coder.kind=topk", "coder.k=4"], ["coder.kind=topk", "coder.k=8"]]  # fmt: skip
    for overrides in settings:
        assert _train_stage(tmp_path, *overrides) == 0
    runs = sorted((tmp_path / "train").iterdir())
    assert len(runs) == 4 and all((run / "metrics.json").exists() and (run / "coder").is_dir() for run in runs)
    coders = [json.loads((run / "config.json").read_text())["coder"] for run in runs]
    assert sorted((c["kind"], c["l1_coefficient"] if c["kind"] == "relu" else c["k"]) for c in coders) == [
        ("relu", 1.0),
        ("relu", 3.0),
        ("topk", 4),
        ("topk", 8),
    ]
    assert {load(run / "coder").n_features for run in runs} == {32}
    before = _files(tmp_path / "train")
    capsys.readouterr()
    for overrides in settings:
        assert _train_stage(tmp_path, *overrides) == 0
    assert capsys.readouterr().out.count("nothing to do") == 4
    assert _files(tmp_path / "train") == before


def test_a_folder_holding_a_finished_run_of_another_configuration_is_refused_in_one_line(store, tmp_path, capsys):
    (tmp_path / "store.zarr").symlink_to(store.path)
    assert _train_stage(tmp_path, "coder.l1_coefficient=1.0") == 0
    [run] = (tmp_path / "train").iterdir()
    recorded = json.loads((run / "config.json").read_text())
    recorded["coder"]["l1_coefficient"] = 2.0  # as if another configuration had finished in this folder
    (run / "config.json").write_text(json.dumps(recorded))
    before = _files(run)
    capsys.readouterr()
    assert _train_stage(tmp_path, "coder.l1_coefficient=1.0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "coder.l1_coefficient=2.0" in err and "coder.l1_coefficient=1.0" in err
    assert _files(run) == before
