"""A CLT trained by the train stage on a harvested store of the tiny ReLU GPT-2, traced by the `pipeline trace`
command in a process of its own: graph files circuit-tracer's frontend models parse, report.md and scores.json."""

import json
import subprocess
import sys

import pytest

from conftest import harvest_in_process

pytestmark = [pytest.mark.slow]

HOOKS = [f"{site}.{layer}" for layer in range(3) for site in ("mlp_in", "mlp_out")]


def test_a_trained_clt_traces_through_the_trace_command(relu_gpt2, tmp_path):
    from circuit_tracer.frontend.graph_models import Model

    from pipeline.cli import main

    harvest_in_process(relu_gpt2, tmp_path, HOOKS, **{"harvest.n_tokens": 1200, "harvest.contexts_per_shard": 40})
    train = ["coder=clt", "coder.n_features=96", "coder.l1_coefficient=0.1", "coder.skip_connection=false",
             "train.layers=[0,1,2]", "train.tokens=6400", "train.batch_size=64", "train.lr=1e-2",
             "train.eval_tokens=256", "train.splice_contexts=0", "train.device=cpu",
             "tracking.mode=disabled"]  # fmt: skip
    assert main(["train", f"out_dir={tmp_path}", f"model.name={relu_gpt2}", *train]) == 0
    [run] = (tmp_path / "train").iterdir()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "trace", f"out_dir={tmp_path}", f"model.name={relu_gpt2}",
         f"trace.run={run}", "trace.prompts=['def add(a, b): return a + b']", "trace.batch_size=64"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trace = tmp_path / "trace"
    assert done.stdout.strip().endswith(f"trace {run.name}: 1 graphs, report.md and scores.json in {trace}")
    [prompt] = json.loads((trace / "scores.json").read_text())["prompts"]
    assert 0 < prompt["replacement_score"] < 1 and 0 < prompt["completeness_score"] <= 1
    assert prompt["pruned_nodes"] < prompt["nodes"]
    graph = Model.model_validate_json((trace / "prompt-0.json").read_text())
    assert graph.metadata.scan == f"./data/features/{run.name}"
    assert "| prompt-0 |" in (trace / "report.md").read_text()
