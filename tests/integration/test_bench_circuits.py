"""`python -m pipeline.bench.circuits --sweep`: the CLT-vs-PLT sweep of the tiny GPT-2 through the pipeline's own
commands, with every arm scored, the fit's circuit table printed and the best CLT traced."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SCORES = ["replacement_score", "completeness_score", "next_token_agreement"]


def test_the_sweep_scores_every_arm_fits_them_and_traces_the_best_clt(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.circuits", "--sweep", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_parquet(out / "sweep" / "results.parquet")
    assert sorted(table.kind.unique()) == ["clt", "plt"] and len(table) == 12 and (table.status == "done").all()
    values = table[SCORES].to_numpy(float)
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert "| budget C | clt | plt |" in done.stdout and "| prompt-0 | `The cat sat on the` |" in done.stdout
    for path in ("fit/report.md", "fit/circuit_scores.png", "trace/report.md", "trace/prompt-0.png"):
        assert (out / path).stat().st_size > 0 and str(out / path) in done.stdout
