"""The trace stage: the dictionary, the model and the prompts checked before any work, then each prompt's
attribution graph (circuit-tracer) written under the trace folder, with report.md and scores.json.

The trace folder (`trace.dir`, default <out_dir>/trace) is the data folder circuit-tracer's graph
server reads: the graph files (`<slug>.json`, `graph-metadata.json`) at its top, the dictionary in
circuit-tracer's format in `dictionary/<dictionary id>/` (written once, atomically, and read back
with circuit-tracer's loaders), and the feature cards under `features/<dictionary id>/`, which the
graphs name as their scan `./data/features/<dictionary id>`.
"""

from pathlib import Path

from pipeline.atomic import create_dir_atomic, write_json_atomic, write_text_atomic
from pipeline.circuits import replacement
from pipeline.circuits.attribution import PromptTrace, TraceOptions, trace_prompt
from pipeline.circuits.lens import convert, hooked_config
from pipeline.circuits.transcoders import load_folder, write_folder
from pipeline.config import PipelineConfig, TraceConfig
from pipeline.layout import OutDir
from pipeline.models.loading import load_tokenizer, pick_device
from pipeline.trace.dictionary import Dictionary, selected_dictionary
from pipeline.trace.prompts import check_lengths, read_prompts
from pipeline.trace.report import report_text, scores_payload


def trace_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.trace.dir) if cfg.trace.dir else OutDir(cfg.out_dir).trace


def options(trace: TraceConfig) -> TraceOptions:
    return TraceOptions(
        batch_size=trace.batch_size,
        max_feature_nodes=trace.max_feature_nodes or None,
        offload=None if trace.offload == "none" else trace.offload,
        max_n_logits=trace.max_n_logits,
        desired_logit_prob=trace.desired_logit_prob,
        node_threshold=trace.node_threshold,
        edge_threshold=trace.edge_threshold,
    )


def validate(cfg: PipelineConfig) -> tuple[Dictionary, list[str]]:
    """The dictionary and the prompts, or ConfigError before anything is written."""
    dictionary = selected_dictionary(cfg)
    prompts = read_prompts(cfg)
    n_ctx = hooked_config(cfg.model, pick_device("cpu")).n_ctx
    check_lengths(prompts, load_tokenizer(cfg.model), cfg.model.name, n_ctx)
    return dictionary, prompts


def run_trace(cfg: PipelineConfig) -> dict:
    """Traces every prompt; returns scores.json's payload."""
    dictionary, prompts = validate(cfg)
    out, device = trace_dir(cfg), pick_device(cfg.model.device)
    model = _replacement_model(cfg, dictionary, out, device)
    traces, slugs = [], []
    for i, prompt in enumerate(prompts):
        traced = trace_prompt(model, prompt, replacement.tokens(model, prompt), options(cfg.trace))
        slugs.append(f"prompt-{i}")
        _graph_files(traced, slugs[-1], out, dictionary.id, cfg.trace)
        traces.append(traced)
        numbers = traced.numbers()
        print(
            f"trace {slugs[-1]}: replacement {numbers['replacement_score']:.3f}, completeness "
            f"{numbers['completeness_score']:.3f}, nodes {numbers['nodes']} -> {numbers['pruned_nodes']}"
        )
    runs = [run.id for run in dictionary.runs]
    payload = scores_payload(dictionary.id, runs, cfg.model.name, [t.numbers() for t in traces])
    write_json_atomic(out / "scores.json", payload)
    write_text_atomic(out / "report.md", report_text(payload, slugs))
    _views(cfg, dictionary, traces, slugs, out)
    print(f"trace {dictionary.id}: {len(prompts)} graphs, report.md and scores.json in {out}")
    return payload


def _replacement_model(cfg: PipelineConfig, dictionary: Dictionary, out: Path, device):
    """circuit-tracer's replacement model with the dictionary, read back from its folder in the trace folder."""
    folder = out / "dictionary" / dictionary.id
    if not folder.exists():  # a run id names its weights, so an existing folder holds the same dictionary
        folder.parent.mkdir(parents=True, exist_ok=True)
        create_dir_atomic(folder, lambda tmp: write_folder(dictionary.members, tmp))
    lens = convert(cfg.model, device)
    n_layers, dtype = lens.config.n_layers, lens.config.dtype
    transcoders = load_folder(folder, n_layers, _scan(dictionary.id), device, dtype)
    return replacement.replacement_model(lens, transcoders)


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
    """MERGER: the call site of the views of issue 16 part (a), not written here: the picture of each pruned
    graph (`pipeline/trace/picture.py`), the feature cards under `out/features/<dictionary.id>/`
    (`pipeline/trace/features.py`, `cfg.trace.n_examples` contexts each) and, with `cfg.trace.serve`, the graph
    server on loopback at `cfg.trace.port` (`pipeline/trace/server.py`)."""
