"""Dictionaries trained by the train stage on harvested stores, traced by the `pipeline trace` command in a process
of its own: a CLT of the tiny ReLU GPT-2 and a set of single-layer transcoders of the tiny Llama, one per layer;
graph files circuit-tracer's frontend models parse, report.md, scores.json, pictures and feature cards."""

import json
import subprocess
import sys

import pytest

from conftest import harvest_in_process

pytestmark = [pytest.mark.slow]

HOOKS = [f"{site}.{layer}" for layer in range(3) for site in ("mlp_in", "mlp_out")]


TRAIN = ["coder.n_features=96", "coder.l1_coefficient=0.1", "coder.skip_connection=false", "train.tokens=6400",
         "train.batch_size=64", "train.lr=1e-2", "train.eval_tokens=256", "train.splice_contexts=0",
         "train.device=cpu", "tracking.mode=disabled"]  # fmt: skip


def _trace(out, model, *overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "trace", f"out_dir={out}", f"model.name={model}", *overrides,
         "trace.prompts=['def add(a, b): return a + b']", "trace.batch_size=64"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _check_trace(trace, dictionary_id: str) -> None:
    from circuit_tracer.frontend.feature_models import Model as Card
    from circuit_tracer.frontend.graph_models import Model

    [prompt] = json.loads((trace / "scores.json").read_text())["prompts"]
    assert 0 < prompt["replacement_score"] < 1 and 0 < prompt["completeness_score"] <= 1
    assert prompt["pruned_nodes"] < prompt["nodes"]
    graph = Model.model_validate_json((trace / "prompt-0.json").read_text())
    assert graph.metadata.scan == f"./data/features/{dictionary_id}"
    assert "| prompt-0 |" in (trace / "report.md").read_text()
    assert (trace / "prompt-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cards = list((trace / "features" / dictionary_id).iterdir())
    kept = {n.feature for n in graph.nodes if n.feature_type == "cross layer transcoder"}
    assert {int(card.stem) for card in cards} == kept
    assert all(Card.model_validate_json(card.read_text()).examples_quantiles for card in cards)


def test_a_trained_clt_traces_through_the_trace_command(relu_gpt2, tmp_path):
    from pipeline.cli import main

    harvest_in_process(relu_gpt2, tmp_path, HOOKS, **{"harvest.n_tokens": 1200, "harvest.contexts_per_shard": 40})
    train = ["coder=clt", "train.layers=[0,1,2]", *TRAIN]
    assert main(["train", f"out_dir={tmp_path}", f"model.name={relu_gpt2}", *train]) == 0
    [run] = (tmp_path / "train").iterdir()
    done = _trace(tmp_path, relu_gpt2, f"trace.run={run}")
    assert done.returncode == 0, done.stderr
    trace = tmp_path / "trace"
    assert done.stdout.strip().endswith(f"trace {run.name}: 1 graphs, report.md and scores.json in {trace}")
    _check_trace(trace, run.name)


def test_llama_transcoders_one_per_layer_trace_as_one_set(tiny_models, tmp_path):
    from pipeline.cli import main

    llama = tiny_models["llama"]
    harvest_in_process(llama, tmp_path, HOOKS, **{"harvest.n_tokens": 1200, "harvest.contexts_per_shard": 40})
    for layer in range(3):
        train = ["coder=transcoder", f"train.hook=mlp_in.{layer}", f"train.target_hook=mlp_out.{layer}", *TRAIN]
        assert main(["train", f"out_dir={tmp_path}", f"model.name={llama}", *train]) == 0
    runs = sorted((tmp_path / "train").iterdir())
    done = _trace(tmp_path, llama, f"trace.runs=[{','.join(map(str, runs))}]")
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "trace" / "scores.json").read_text())
    assert sorted(scores["runs"]) == sorted(run.name for run in runs) and scores["dictionary"].startswith(
        "transcoders_L0-2"
    )
    _check_trace(tmp_path / "trace", scores["dictionary"])
