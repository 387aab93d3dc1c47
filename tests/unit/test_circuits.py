"""The tracing core on tiny in-process models: the TransformerLens conversion equals the transformers model, an
exact dictionary (the model's own MLPs) scores 1, pruning keeps the logits and drops the least influential
nodes, and the graph files parse with circuit-tracer's own models."""

import json

import pytest
import torch

from pipeline.circuits import replacement
from pipeline.circuits.attribution import TraceOptions, trace_prompt
from pipeline.circuits.lens import convert
from pipeline.circuits.scorer import CircuitScorer
from pipeline.circuits.transcoders import load_folder, write_folder
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.hooks import HookPoint, run_to_hooks
from pipeline.models.loading import load_model

CPU = torch.device("cpu")
PROMPTS = ["def add(a, b): return a + b", "import os"]
OPTIONS = TraceOptions(batch_size=64, max_n_logits=3)


def _source(model_dir, layers: list[int], scales: float = 0.7) -> dict:
    inputs, targets = [f"mlp_in.{layer}" for layer in layers], [f"mlp_out.{layer}" for layer in layers]
    return {
        "model": {"name": str(model_dir), "revision": "main", "dtype": "float32", "n_layers": 3, "d_model": 32,
                  "has_lm_head": True},
        "inputs": inputs, "targets": targets, "layers": layers,
        "scales": {name: scales + 0.1 * i for i, name in enumerate(inputs + targets)},
    }  # fmt: skip


@torch.no_grad()
def _exact(coder, hf_model, source: dict):
    """`coder` set to the model's own ReLU MLPs (on scaled arrays): encoder c_fc, decoder c_proj, a ~0 threshold."""
    coder.log_threshold.fill_(-80.0)
    for w in coder.w_dec:
        w.zero_()
    for i, layer in enumerate(source["layers"]):
        mlp = hf_model.transformer.h[layer].mlp  # GPT-2's Conv1D: y = x @ weight + bias
        s_in, s_out = source["scales"][f"mlp_in.{layer}"], source["scales"][f"mlp_out.{layer}"]
        coder.w_enc[i] = mlp.c_fc.weight.t() / s_in
        coder.b_enc[i] = mlp.c_fc.bias
        coder.w_dec[i][0] = s_out * mlp.c_proj.weight.t()
        coder.b_dec[i] = s_out * mlp.c_proj.bias
    return coder.eval()


def _exact_clt(model_dir):
    source = _source(model_dir, [0, 1, 2])
    coder = build(AnyCoderConfig(kind="clt", n_features=3 * 128, skip_connection=False), 32, 3)
    return _exact(coder, load_model(ModelConfig(name=str(model_dir)), CPU), source), source


def _exact_transcoders(model_dir) -> list:
    hf_model = load_model(ModelConfig(name=str(model_dir)), CPU)
    members = []
    for layer in range(3):
        source = _source(model_dir, [layer])
        members.append((_exact(build(AnyCoderConfig(kind="transcoder", n_features=128), 32), hf_model, source), source))
    return members


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_the_replacement_model_equals_the_transformers_model(tiny_models, family, tmp_path):
    cfg = ModelConfig(name=str(tiny_models[family]))
    coder = build(AnyCoderConfig(kind="transcoder", n_features=16), 32)
    model = _replacement(tiny_models[family], [(coder, _source(tiny_models[family], [1]))], tmp_path)
    hf_model = load_model(cfg, CPU)
    ids = torch.tensor([[101, 2003, 1037, 3231, 1997, 1996, 102]])
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
        torch.testing.assert_close(logits, hf_model(ids).logits, atol=1e-4, rtol=1e-4)
    points = [HookPoint(site, layer) for layer in range(3) for site in ("mlp_in", "mlp_out")]
    ours = run_to_hooks(hf_model, ids, points, 3)
    for layer in range(3):
        for theirs, mine in (("mlp.hook_in", "mlp_in"), ("mlp.hook_out", "mlp_out")):
            torch.testing.assert_close(cache[f"blocks.{layer}.{theirs}"], ours[f"{mine}.{layer}"], atol=1e-5, rtol=1e-5)


def test_an_exact_clt_and_an_exact_transcoder_set_score_one(relu_gpt2):
    scorer = CircuitScorer(ModelConfig(name=str(relu_gpt2)), PROMPTS, OPTIONS, CPU)
    coder, source = _exact_clt(relu_gpt2)
    for got in (scorer.score(coder, source), scorer.score_members(_exact_transcoders(relu_gpt2))):
        assert got["replacement_score"] == pytest.approx(1.0, abs=1e-3)
        assert got["completeness_score"] == pytest.approx(1.0, abs=1e-3)
        assert got["next_token_agreement"] == 1.0
    with torch.no_grad():
        coder.w_dec[0][2].normal_()  # layer 0 -> layer 2: no longer the model's MLPs
    worse = scorer.score(coder, source)
    assert worse["replacement_score"] < 0.99 and worse["completeness_score"] < 0.99
    with torch.no_grad():
        coder.log_threshold.fill_(50.0)  # no feature fires: circuit-tracer draws no graph, nothing is explained
    dead = scorer.score(coder, source)
    assert dead["replacement_score"] == dead["completeness_score"] == 0.0 and 0 <= dead["next_token_agreement"] <= 1


def test_pruning_keeps_the_logits_and_tokens_and_drops_the_least_influential_nodes(relu_gpt2, tmp_path):
    from circuit_tracer.graph import compute_node_influence, find_threshold

    coder, source = _exact_clt(relu_gpt2)
    with torch.no_grad():
        coder.w_dec[0][1].normal_(std=0.1)
    model = _replacement(relu_gpt2, [(coder, source)], tmp_path)
    traced = trace_prompt(model, PROMPTS[0], replacement.tokens(model, PROMPTS[0]), OPTIONS)
    graph, mask = traced.graph, traced.node_mask
    n_logits, n_tokens = len(graph.logit_targets), len(graph.input_tokens)
    assert mask[-n_logits - n_tokens :].all()
    weights = torch.zeros(graph.adjacency_matrix.shape[0])
    weights[-n_logits:] = graph.logit_probabilities
    influence = compute_node_influence(graph.adjacency_matrix, weights)
    below = influence < find_threshold(influence, OPTIONS.node_threshold)
    below[-n_logits - n_tokens :] = False
    assert below.any() and not mask[below].any()
    numbers = traced.numbers()
    assert numbers["pruned_nodes"] < numbers["nodes"] and 0 < numbers["pruned_edges"] < numbers["edges"]
    assert [t["probability"] for t in numbers["top_logits"]] == sorted(graph.logit_probabilities.tolist())[::-1]


def _replacement(model_dir, members, tmp_path):
    lens = convert(ModelConfig(name=str(model_dir)), CPU)
    write_folder(members, tmp_path / "dictionary")
    return replacement.replacement_model(lens, load_folder(tmp_path / "dictionary", 3, "t", CPU, torch.float32))


def test_a_perturbed_clt_on_llama_traces_and_its_graph_files_parse(tiny_models, tmp_path):
    from circuit_tracer.frontend.graph_models import Model
    from circuit_tracer.utils.create_graph_files import create_graph_files

    torch.manual_seed(0)
    source = _source(tiny_models["llama"], [0, 2])
    coder = build(AnyCoderConfig(kind="clt", n_features=64, skip_connection=False), 32, 2).eval()
    with torch.no_grad():
        for name, p in coder.named_parameters():
            p.add_(0.3 * torch.randn_like(p)) if "log_threshold" not in name else p.fill_(-3.0)
    model = _replacement(tiny_models["llama"], [(coder, source)], tmp_path)
    traced = trace_prompt(model, PROMPTS[0], replacement.tokens(model, PROMPTS[0]), OPTIONS)
    assert set(traced.graph.active_features[:, 0].tolist()) <= {0, 2} and len(traced.graph.active_features) > 0
    assert 0 <= traced.replacement_score <= 1 and 0 <= traced.completeness_score <= 1
    create_graph_files(traced.graph, "p0", tmp_path / "graphs", scan="./data/features/d")
    parsed = Model.model_validate_json((tmp_path / "graphs" / "p0.json").read_text())
    assert parsed.metadata.slug == "p0" and len(parsed.nodes) > 0
    assert json.loads((tmp_path / "graphs" / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "p0"


def test_models_tracing_cannot_run_are_refused_naming_model_name(tiny_models, tmp_path):
    import transformers as tf

    with pytest.raises(ConfigError, match="^model.name: .* has no language-model head"):
        convert(ModelConfig(name=str(tiny_models["bert"])), CPU)
    opt = tmp_path / "opt"
    tf.OPTConfig(architectures=["OPTForCausalLM"]).save_pretrained(opt)
    with pytest.raises(ConfigError, match="^model.name: tracing converts GPT2LMHeadModel, LlamaForCausalLM, "):
        convert(ModelConfig(name=str(opt)), CPU)
