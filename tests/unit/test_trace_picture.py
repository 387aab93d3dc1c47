"""The picture of a real pruned attribution graph: a CLT exported for circuit-tracer, a tiny GPT-2 built
in-process, `attribute` and `create_graph_files`; then a PNG that opens, labelled with the prompt's tokens."""

import json

import pytest
import torch
from PIL import Image

from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import ModelConfig
from pipeline.export.runs import Run
from pipeline.models.loading import resolve_path
from pipeline.trace.picture import draw, figure

from unit.test_export_attribution import D, N, _replacement_model
from unit.test_export_formats import _perturbed, _source, _written

PROMPT = "def add(a, b): return a + b"


@pytest.fixture(scope="module")
def graph_json(tmp_path_factory, one_thread):
    from circuit_tracer import attribute
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.utils.create_graph_files import create_graph_files

    tmp = tmp_path_factory.mktemp("graph")
    torch.manual_seed(0)
    coder = _perturbed(build(AnyCoderConfig(kind="clt", n_features=2 * N), D, 2))
    run = Run(tmp / "c", coder, _source(["mlp_in.0", "mlp_in.2"], ["mlp_out.0", "mlp_out.2"]), {}, None)
    folder = _written(run, "circuit-tracer", tmp)
    clt = load_clt(str(folder), "mlp.hook_in", "mlp.hook_out", device=torch.device("cpu"), dtype=torch.float32)
    graph = attribute(PROMPT, _replacement_model(clt), max_n_logits=3, batch_size=64)
    graph.cfg.tokenizer_name = resolve_path(ModelConfig())  # the tiny model's tokenizer, from a local folder
    create_graph_files(graph, "tiny-add", str(tmp / "graphs"), scan="tiny", node_threshold=0.8, edge_threshold=0.98)
    return tmp / "graphs" / "tiny-add.json"


def test_the_picture_is_a_png_labelled_with_the_prompt_tokens_and_the_top_logits(graph_json, tmp_path):
    graph = json.loads(graph_json.read_text())
    texts = [t.get_text() for ax in figure(graph_json).axes for t in [*ax.get_xticklabels(), *ax.texts]]
    tokens = graph["metadata"]["prompt_tokens"]
    assert len(tokens) > 5 and [repr(t)[1:-1] for t in tokens] == texts[: len(tokens)]
    logits = [node["clerp"] for node in graph["nodes"] if node["feature_type"] == "logit"]
    assert len(logits) == 3 and set(logits) <= set(texts)
    assert {node["feature_type"] for node in graph["nodes"]} >= {"embedding", "logit", "cross layer transcoder"}

    out = tmp_path / "tiny-add.png"
    draw(graph_json, out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        image.verify()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-add.png"]  # no temporary file left beside it
