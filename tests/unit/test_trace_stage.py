"""`pipeline trace` in this process on the tiny ReLU GPT-2: an exact CLT's graphs, report and scores, a transcoder
set of runs, one per layer; bad input refused with one line, exit 2 and nothing written."""

import json
import sys

import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.sweep.results import gather

from conftest import harvest_in_process
from unit.test_circuits import _exact_clt, _exact_transcoders, _source

PROMPT = "def add(a, b): return a + b"


@pytest.fixture(scope="module")
def relu_store(relu_gpt2, tmp_path_factory):
    """The store the runs say they were trained on: the feature cards read their contexts from it."""
    return harvest_in_process(relu_gpt2, tmp_path_factory.mktemp("store"), [f"mlp_in.{layer}" for layer in range(3)])


@pytest.fixture
def run_folder(relu_store):
    def make(folder, coder, source):
        """A finished run folder as training leaves it: coder/ (weights, config, source.json) and metrics.json."""
        coder.save(folder / "coder", {**source, "store": str(relu_store.path)})
        (folder / "metrics.json").write_text(json.dumps({"loss": 0.1, "fvu": 0.0, "l0": 4.0}))
        return folder

    return make


def _trace(out, model, *overrides) -> int:
    return main(["trace", f"out_dir={out}", f"model.name={model}", "trace.batch_size=64", "trace.max_n_logits=3",
                 *overrides])  # fmt: skip


def test_an_exact_clt_traces_into_graph_files_a_report_and_scores_of_one(relu_gpt2, run_folder, tmp_path, capsys):
    from circuit_tracer.frontend.graph_models import Model

    run = run_folder(tmp_path / "clt", *_exact_clt(relu_gpt2))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("import os\n\n")
    out = tmp_path / "out"
    assert (
        _trace(out, relu_gpt2, f"trace.run={run}", f"trace.prompts=['{PROMPT}']", f"trace.prompts_file={prompts}") == 0
    )
    trace = out / "trace"
    scores = json.loads((trace / "scores.json").read_text())
    assert scores["dictionary"] == "clt" and scores["runs"] == ["clt"] and len(scores["prompts"]) == 2
    assert [p["prompt"] for p in scores["prompts"]] == [PROMPT, "import os"]
    for p in scores["prompts"]:
        assert p["replacement_score"] == pytest.approx(1.0, abs=1e-3)
        assert p["completeness_score"] == pytest.approx(1.0, abs=1e-3)
        assert 0 < p["pruned_nodes"] < p["nodes"] and 0 < p["pruned_edges"] < p["edges"]
        assert 1 <= len(p["top_logits"]) <= 3
    assert scores["mean"]["replacement_score"] == pytest.approx(1.0, abs=1e-3)
    report = (trace / "report.md").read_text()
    first = scores["prompts"][0]
    assert f"| prompt-0 | `{PROMPT}` | {first['replacement_score']:.3f} |" in report
    assert f"| {first['nodes']} | {first['edges']} | {first['pruned_nodes']} | {first['pruned_edges']} |" in report
    graph = Model.model_validate_json((trace / "prompt-0.json").read_text())
    assert graph.metadata.scan == "./data/features/clt" and graph.metadata.prompt == PROMPT
    listed = json.loads((trace / "graph-metadata.json").read_text())["graphs"]
    assert sorted(g["slug"] for g in listed) == ["prompt-0", "prompt-1"]
    written = ["features", "graph-metadata.json", "prompt-0.json", "prompt-0.png", "prompt-1.json", "prompt-1.png",
               "report.md", "scores.json"]  # fmt: skip
    assert sorted(p.name for p in trace.iterdir()) == written
    kept = {(n.layer, n.feature) for n in graph.nodes if n.feature_type == "cross layer transcoder"}
    cards = {int(p.stem) for p in (trace / "features" / "clt").iterdir()}
    assert kept and {n for _, n in kept} <= cards  # a card for every feature the pruned graphs keep
    assert Image.open(trace / "prompt-0.png").size[0] > 100
    assert "trace clt: 2 graphs" in capsys.readouterr().out


def test_single_layer_transcoder_runs_trace_as_one_set(relu_gpt2, run_folder, tmp_path):
    runs = [run_folder(tmp_path / f"t{i}", *member) for i, member in enumerate(_exact_transcoders(relu_gpt2))]
    out = tmp_path / "out"
    listed = ",".join(str(r) for r in reversed(runs))
    assert _trace(out, relu_gpt2, f"trace.runs=[{listed}]", f"trace.prompts=['{PROMPT}']") == 0
    scores = json.loads((out / "trace" / "scores.json").read_text())
    assert scores["runs"] == ["t0", "t1", "t2"] and scores["dictionary"].startswith("transcoders_L0-2_")
    assert scores["prompts"][0]["replacement_score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "case, says",
    [
        ("other model", "trace.run: clt is a dictionary of {other}, not of model.name={model}"),
        ("long prompt", "trace.prompts: prompt 0 ("),
        ("sae", "trace.run: circuit-tracer replaces MLPs with transcoders, not with a relu SAE (sae reads"),
        ("no prompts", "trace.prompts: no prompt to trace"),
        ("no lm head", "model.name: {bert} has no language-model head"),
        ("two names", "trace.runs: trace.run names the dictionary already"),
        ("no file", "trace.prompts_file: {missing} is not a file"),
        ("dead", "trace.prompts: no feature of clt fires on prompt 0 ("),
        ("no store", "trace.run: clt was trained on the store at {missing}, which is missing or incomplete;"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    relu_gpt2, tiny_models, run_folder, tmp_path, capsys, case, says
):
    coder, source = _exact_clt(relu_gpt2)
    model, prompts = relu_gpt2, [f"trace.prompts=['{PROMPT}']"]
    run = tmp_path / ("sae" if case == "sae" else "clt")
    if case == "other model":
        model = tiny_models["gpt2"]
    if case == "sae":
        coder, source = build(AnyCoderConfig(n_features=16), 32), _source(relu_gpt2, [1])
        source["targets"] = source["inputs"]
    if case == "dead":
        with torch.no_grad():
            coder.log_threshold.fill_(50.0)
    if case == "no lm head":
        model, source = tiny_models["bert"], _source(tiny_models["bert"], [0, 1, 2])
    run_folder(run, coder, source)
    if case == "no store":
        coder.save(run / "coder", {**source, "store": str(tmp_path / "missing.txt")})
    extra = {
        "long prompt": ["trace.prompts=['" + " ".join(["word"] * 70) + "']"],
        "no prompts": [],
        "two names": [*prompts, f"trace.runs=[{run}]"],
        "no file": [*prompts, f"trace.prompts_file={tmp_path / 'missing.txt'}"],
    }.get(case, prompts)
    out = tmp_path / "out"
    assert _trace(out, model, f"trace.run={run}", *extra) == 2
    err = capsys.readouterr().err
    expected = says.format(other=relu_gpt2, model=model, bert=tiny_models["bert"], missing=tmp_path / "missing.txt")
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    assert not out.exists()


def test_select_best_traces_the_lowest_loss_arm_of_the_largest_budget(relu_gpt2, run_folder, tmp_path):
    sae = build(AnyCoderConfig(n_features=16), 32), {**_source(relu_gpt2, [1]), "targets": ["mlp_in.1"]}
    for run_id, budget, loss, (coder, source) in (
        ("a", 1e9, 0.2, _exact_clt(relu_gpt2)), ("b", 2e9, 0.3, _exact_clt(relu_gpt2)), ("c", 2e9, 0.5, sae)
    ):  # fmt: skip
        folder = run_folder(tmp_path / "sweep" / "runs" / run_id, coder, source)
        row = {"run_id": run_id, "status": "done", "loss": loss, "budget": budget, "n_features": 384, "lr": 1e-3,
               "tokens": 1000, "kind": "clt"}  # fmt: skip
        (folder / "result.json").write_text(json.dumps(row))
    gather(tmp_path / "sweep")
    assert _trace(tmp_path, relu_gpt2, f"trace.prompts=['{PROMPT}']") == 0
    assert json.loads((tmp_path / "trace" / "scores.json").read_text())["runs"] == ["b"]


@pytest.mark.parametrize("module", ["circuit_tracer", "transformer_lens"])
def test_without_the_interop_libraries_the_trace_says_what_to_install(module, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    out = tmp_path / "out"
    assert main(["trace", f"out_dir={out}", "trace.prompts=['x']"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: trace: tracing runs on ") and "pip install -e '.[interop]'" in err
    assert err.count("\n") == 1 and not out.exists()
