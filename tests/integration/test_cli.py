"""The `pipeline` command run as a user runs it, in a process of its own."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_stages_and_a_stage_shows_its_config():
    top = _run("--help")
    assert top.returncode == 0
    for stage in ("harvest", "train", "sweep", "fit", "verify", "export", "run"):
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
