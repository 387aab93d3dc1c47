import subprocess
import sys

import pytest

from pipeline.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages_and_a_stage_shows_its_config():
    top = _run("--help")
    assert top.returncode == 0
    for stage in ("harvest", "train", "sweep", "fit", "run"):
        assert f"  {stage} " in top.stdout
    stage = _run("harvest", "--help", "harvest.n_tokens=123")
    assert stage.returncode == 0 and "n_tokens: 123" in stage.stdout and "store:" in stage.stdout


def test_a_stage_help_documents_the_fields_of_the_groups_it_reads_and_no_others():
    result = _run("train", "--help", "train.lr=0.01")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    lr = next(line for line in lines if line.lstrip().startswith("lr:"))
    assert lr.split("#")[0].strip() == "lr: 0.01" and "peak Adam learning rate [more than 0]" in lr
    assert "  parallel: none" in result.stdout and "[one of none, ddp, features]" in result.stdout
    assert "tracking:" in result.stdout and "coder:" in result.stdout
    for unread in ("harvest:", "n_tokens", "data:", "store:", "fit:", "n_bootstrap"):
        assert unread not in result.stdout
    fit = _run("fit", "--help").stdout
    assert "n_bootstrap: 1000" in fit and "train:" not in fit and "model:" not in fit


def test_a_bad_override_is_one_line_and_exit_code_2(tmp_path):
    result = _run("harvest", f"out_dir={tmp_path / 'x'}", "harvest.n_tokenz=5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "harvest.n_tokenz" in result.stderr
    assert not (tmp_path / "x").exists()


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
