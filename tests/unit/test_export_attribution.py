"""An exported transcoder set and an exported CLT load into circuit-tracer's ReplacementModel (a tiny GPT-2
built in-process) and `attribute` draws a graph over a prompt whose features are those of the covered layers."""

import torch

from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.export.runs import Run

from conftest import _minilm_tokenizer
from unit.test_export_formats import _perturbed, _source, _written

D, N = 32, 16


def _replacement_model(transcoders):
    from circuit_tracer import ReplacementModel
    from transformer_lens import HookedTransformerConfig

    tokenizer = _minilm_tokenizer()
    cfg = HookedTransformerConfig(
        d_model=D, d_head=16, n_heads=2, d_mlp=4 * D, n_layers=3, n_ctx=64, d_vocab=tokenizer.vocab_size,
        act_fn="gelu_new", normalization_type="LN", device="cpu",
    )  # fmt: skip
    torch.manual_seed(0)
    return ReplacementModel.from_config(cfg, transcoders, backend="transformerlens", tokenizer=tokenizer)


def _attributed_layers(transcoders) -> set[int]:
    from circuit_tracer import attribute

    model = _replacement_model(transcoders)
    graph = attribute("def add(a, b): return a + b", model, max_n_logits=3, batch_size=64)
    assert graph.adjacency_matrix.shape[0] == graph.adjacency_matrix.shape[1] > len(graph.active_features) > 0
    return set(graph.active_features[:, 0].tolist())


def test_a_transcoder_set_loads_into_a_replacement_model_and_attributes(tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    torch.manual_seed(0)
    coder = _perturbed(build(AnyCoderConfig(kind="transcoder", n_features=N, skip_connection=True), D))
    run = Run(tmp_path / "t", coder, _source(["mlp_in.1"], ["mlp_out.1"]), {}, None)
    folder = _written(run, "circuit-tracer", tmp_path)
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(3)}
    transcoders = load_transcoder_set(paths, "tiny", "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"))
    assert _attributed_layers(transcoders) == {1}  # the layers the run does not cover have no active feature


def test_a_cross_layer_transcoder_loads_into_a_replacement_model_and_attributes(tmp_path):
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    torch.manual_seed(0)
    coder = _perturbed(build(AnyCoderConfig(kind="clt", n_features=2 * N), D, 2))
    run = Run(tmp_path / "c", coder, _source(["mlp_in.0", "mlp_in.2"], ["mlp_out.0", "mlp_out.2"]), {}, None)
    folder = _written(run, "circuit-tracer", tmp_path)
    clt = load_clt(str(folder), "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"), dtype=torch.float32)
    assert _attributed_layers(clt) == {0, 2}  # layer 1, which the CLT does not span, has no active feature
