"""The command line in this process: bad input refused with one line and exit 2 before any work, a dry run."""

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
