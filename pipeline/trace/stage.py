"""The trace stage: the dictionary, the model and the prompts checked before any work, then each prompt's
attribution graph (circuit-tracer), and only when every prompt has one, the graph files, report.md and
scores.json written under the trace folder.

The dictionary goes through circuit-tracer's format (`replacement.dictionary_model`). The trace folder
(`trace.dir`, default <out_dir>/trace) is the data folder circuit-tracer's graph server reads: the
graph files (`<slug>.json`, `graph-metadata.json`) at its top and the feature cards under
`features/<dictionary id>/`, which the graphs name as their scan `./data/features/<dictionary id>`.
"""

import json
import threading
from pathlib import Path

from pipeline.atomic import write_json_atomic, write_text_atomic
from pipeline.circuits import replacement
from pipeline.circuits.attribution import PromptTrace, TraceOptions, trace_prompt
from pipeline.circuits.installed import check_installed
from pipeline.circuits.lens import convert, hooked_config
from pipeline.circuits.prompts import check_lengths
from pipeline.config import PipelineConfig, TraceConfig
from pipeline.errors import ConfigError
from pipeline.layout import OutDir
from pipeline.models.loading import load_tokenizer, pick_device
from pipeline.store.activation_store import ActivationStore, created
from pipeline.trace.dictionary import Dictionary, selected_dictionary
from pipeline.trace.features import write_features
from pipeline.trace.picture import draw
from pipeline.trace.prompts import read_prompts
from pipeline.trace.report import report_text, scores_payload
from pipeline.trace.server import serve

FEATURE_NODE = "cross layer transcoder"  # circuit-tracer's feature_type of every feature node, CLT or not


def trace_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.trace.dir) if cfg.trace.dir else OutDir(cfg.out_dir).trace


def validate(cfg: PipelineConfig) -> tuple[Dictionary, list[str]]:
    """The dictionary and the prompts, or ConfigError before anything is written."""
    check_installed("trace")
    dictionary = selected_dictionary(cfg)
    prompts = read_prompts(cfg)
    n_ctx = hooked_config(cfg.model, pick_device("cpu")).n_ctx
    check_lengths(prompts, load_tokenizer(cfg.model), cfg.model.name, n_ctx, "trace.prompts")
    _stores(dictionary)  # the feature cards' contexts come from the training stores
    return dictionary, prompts


def run_trace(cfg: PipelineConfig) -> dict:
    """Traces every prompt; returns scores.json's payload."""
    dictionary, prompts = validate(cfg)
    out, device = trace_dir(cfg), pick_device(cfg.model.device)
    lens = convert(cfg.model, device)
    model = replacement.dictionary_model(lens, dictionary.members, _scan(dictionary.id), device)
    traces = [_traced(model, dictionary, i, prompt, TraceOptions.of(cfg.trace)) for i, prompt in enumerate(prompts)]
    slugs = [f"prompt-{i}" for i in range(len(prompts))]
    for traced, slug in zip(traces, slugs, strict=True):
        _graph_files(traced, slug, out, dictionary.id, cfg.trace)
    runs = [run.id for run in dictionary.runs]
    payload = scores_payload(dictionary.id, runs, cfg.model.name, [t.numbers() for t in traces])
    write_json_atomic(out / "scores.json", payload)
    write_text_atomic(out / "report.md", report_text(payload, slugs))
    _views(cfg, dictionary, traces, slugs, out)
    print(f"trace {dictionary.id}: {len(prompts)} graphs, report.md and scores.json in {out}")
    return payload


def _traced(model, dictionary: Dictionary, i: int, prompt: str, opts: TraceOptions) -> PromptTrace:
    token_ids = replacement.tokens(model, prompt)
    if not replacement.active_features(model, token_ids):
        raise ConfigError(
            f"trace.prompts: no feature of {dictionary.id} fires on prompt {i} ({prompt[:40]!r}), so it has no "
            "attribution graph; trace another prompt or a dictionary with live features"
        )
    traced = trace_prompt(model, prompt, token_ids, opts)
    numbers = traced.numbers()
    print(
        f"trace prompt-{i}: replacement {numbers['replacement_score']:.3f}, completeness "
        f"{numbers['completeness_score']:.3f}, nodes {numbers['nodes']} -> {numbers['pruned_nodes']}"
    )
    return traced


def _scan(dictionary_id: str) -> str:
    """Where the frontend, served from the trace folder, fetches the feature cards of the dictionary."""
    return f"./data/features/{dictionary_id}"


def _graph_files(traced: PromptTrace, slug: str, out: Path, dictionary_id: str, trace: TraceConfig) -> None:
    from circuit_tracer.utils.create_graph_files import create_graph_files

    create_graph_files(
        traced.graph, slug, str(out), scan=_scan(dictionary_id),
        node_threshold=trace.node_threshold, edge_threshold=trace.edge_threshold,
    )  # fmt: skip


def _views(cfg: PipelineConfig, dictionary: Dictionary, traces: list[PromptTrace], slugs: list[str], out: Path):
    """The picture of each pruned graph, the feature cards of every feature a pruned graph keeps, and with
    `trace.serve` the graph server on loopback until interrupted."""
    for slug in slugs:
        draw(out / f"{slug}.json", out / f"{slug}.png")
    kept = set().union(*(_kept_features(out / f"{slug}.json") for slug in slugs))
    cards = out / "features" / dictionary.id
    for run, store in zip(dictionary.runs, _stores(dictionary), strict=True):
        write_features(cards, run, store, kept, cfg.trace.n_examples)
    print(f"trace {dictionary.id}: pictures <slug>.png and {len(kept)} feature cards in {cards}")
    if cfg.trace.serve:
        _serve(out, cfg.trace.port)


def _kept_features(graph_json: Path) -> set[tuple[int, int]]:
    """(layer, feature) of the feature nodes in a written graph file (node ids `<layer>_<feature>_<position>`)."""
    nodes = json.loads(graph_json.read_text())["nodes"]
    return {tuple(map(int, n["node_id"].split("_")[:2])) for n in nodes if n["feature_type"] == FEATURE_NODE}


def _stores(dictionary: Dictionary) -> list[ActivationStore]:
    """Each run's training store, which its feature cards read their contexts from."""
    stores = []
    for run in dictionary.runs:
        path = Path(run.source["store"])
        if not (created(path) and ActivationStore(path).complete):
            raise ConfigError(
                f"{dictionary.field}: {run.id} was trained on the store at {path}, which is missing or incomplete; "
                "the feature cards read their contexts from it"
            )
        stores.append(ActivationStore(path))
    return stores


def _serve(out: Path, port: int) -> None:
    server = serve(out, port)
    print(f"trace: serving {out} at {server.url} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
