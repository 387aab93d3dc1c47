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
    for stage in ("harvest", "train", "sweep", "fit", "run"):
        assert f"  {stage} " in top.stdout
    stage = _run("sweep", "--help", "harvest.n_tokens=123")
    assert stage.returncode == 0 and "n_tokens: 123" in stage.stdout and "launcher:" in stage.stdout


def test_a_bad_override_is_one_line_and_exit_code_2(tmp_path):
    result = _run("harvest", f"out_dir={tmp_path / 'x'}", "harvest.n_tokenz=5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "harvest.n_tokenz" in result.stderr
    assert not (tmp_path / "x").exists()
