"""The command line in this process: bad input refused with one line and exit 2 before any work, a dry run."""

import shutil
from pathlib import Path

import pytest

from pipeline.cli import main


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name=/no/such/model"], "model.name: '/no/such/model' is neither"),
        (["harvest.hooks=[resid_post.9]"], "harvest.hooks: layer 9"),
        (["sweep=missing"], "sweep: no sweep file 'missing'"),
        (["harvest.n_tokens=-5"], "harvest.n_tokens: expected at least 1, got -5"),
        (["store.codec=lz4"], "store.codec"),
        (["launcher.name=k8s"], "launcher.name"),
        (["tracking.mode=sometimes"], "tracking.mode"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, capsys, overrides, message):
    assert main(["run", f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_budget_too_small_is_refused_naming_the_arm(tmp_path, capsys):
    sweep = tmp_path / "small.yaml"
    sweep.write_text("budgets: [1.0e5]\nexpansion: [1]\nlrs: [1.0e-3]\n")
    assert main(["run", f"out_dir={tmp_path / 'out'}", f"sweep={sweep}"]) == 2
    assert "arm relu_C100000_N384" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_stage_and_missing_store_exit_2(tmp_path, capsys):
    assert main(["tune"]) == 2
    assert main(["sweep", f"out_dir={tmp_path}"]) == 2
    assert "no activation store" in capsys.readouterr().err
    assert main(["fit", f"out_dir={tmp_path}"]) == 2


def test_a_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["run", f"out_dir={tmp_path / 'out'}", "sweep=smoke", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "relu_C4e+09_N192_lr0.001_l1-5_s0" in out and "18 arms planned; dry run" in out
    assert not (tmp_path / "out").exists()


def _inputs(folder: Path, tiny_models) -> Path:
    """One broken file of each kind the stages read, besides the store (see test_store_verify.py)."""
    folder.mkdir()
    files = {
        "bad.jsonl": b'{"text": "a"}\n{not json\n',
        "body.jsonl": b'{"body": "a"}\n',
        "fake.parquet": b"not parquet",
        "latin1.txt": "caf\xe9\n".encode("latin-1"),
        "broken.yaml": b"budgets: [1e9, 2e9\n",
        "typo.yaml": b"budgets: [1e9]\nlr: [1e-3]\n",
        "word.yaml": b"budgets: [1e9]\nlrs: [fast]\n",
        "negative.yaml": b"budgets: [-1e9]\nlrs: [1e-3]\n",
        "results.parquet": b"PAR1 not a table",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "untokenized").mkdir()  # a model's config and weights without its tokenizer
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models["gpt2"] / name, folder / "untokenized" / name)
    return folder


# (case, stage, overrides ({in} is the folder of broken inputs), the start of the error line after "error: ")
BAD_FILES = [
    (
        "data file missing",
        "harvest",
        ["data=files", "data.paths=[{in}/none.txt]"],
        "data.paths: {in}/none.txt does not",
    ),
    (
        "data file not JSON",
        "harvest",
        ["data=files", "data.paths=[{in}/bad.jsonl]"],
        "data.paths: {in}/bad.jsonl cannot",
    ),
    (
        "data file no text",
        "harvest",
        ["data=files", "data.paths=[{in}/body.jsonl]"],
        "data.text_field: {in}/body.jsonl",
    ),
    ("data not Parquet", "harvest", ["data=files", "data.paths=[{in}/fake.parquet]"], "data.paths: {in}/fake.parquet"),
    ("data not UTF-8", "harvest", ["data=files", "data.paths=[{in}/latin1.txt]"], "data.paths: {in}/latin1.txt cannot"),
    ("data file a folder", "harvest", ["data=files", "data.paths=[{in}]"], "data.paths: {in} should end in .txt"),
    (
        "model no tokenizer",
        "harvest",
        ["model.name={in}/untokenized", "data.context_len=16"],
        "model.name: '{in}/untokenized' has no tokenizer",
    ),
    ("model folder empty", "harvest", ["model.name={in}"], "model.name: '{in}' is neither a folder with a config.json"),
    ("sweep not YAML", "run", ["sweep={in}/broken.yaml"], "sweep: {in}/broken.yaml: expected a YAML mapping"),
    ("sweep unknown key", "run", ["sweep={in}/typo.yaml"], "sweep: {in}/typo.yaml: Key 'lr' not in 'SweepSpec'"),
    ("sweep bad value", "run", ["sweep={in}/word.yaml"], "sweep: {in}/word.yaml: Value 'fast' of type 'str'"),
    ("sweep out of range", "run", ["sweep={in}/negative.yaml"], "sweep: {in}/negative.yaml: budgets should be"),
    ("results missing", "fit", ["fit.results=[{in}/none.parquet]"], "{in}/none.parquet: results table not found"),
    ("results not Parquet", "fit", ["fit.results=[{in}/results.parquet]"], "{in}/results.parquet: cannot be read"),
]


@pytest.mark.parametrize(("stage", "overrides", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_input_file_is_refused_with_one_line_naming_it_and_nothing_written(
    tiny_models, tmp_path, capsys, stage, overrides, message
):
    inputs = _inputs(tmp_path / "inputs", tiny_models)
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    overrides = [o.replace("{in}", str(inputs)) for o in overrides]
    assert main([stage, f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.replace('{in}', str(inputs))}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before
