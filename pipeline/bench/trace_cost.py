"""What one prompt's attribution graph costs: seconds and peak memory of circuit-tracer's `attribute`, by case.

A case is a prompt length (tokens, its BOS included) and a `max_feature_nodes` (0 = every active
feature). Each case runs in a fresh process, so that its peak memory is its own: on CPU the
process's maximum RSS (`getrusage`), on a GPU `torch.cuda.max_memory_allocated`; `attribute_mb` is
how far the peak rose during `attribute` above what the loaded model and dictionary held. The
prompt is the first tokens of `TEXT` (repeated as needed). The dictionary is a trained run folder
(CLT or transcoder) or, without one, `tiny_lm.mlp_clt` of the tiny GPT-2, which replaces its MLPs
exactly. That one scores 1 under any cap: the features a cap drops are left out of the graph, not
counted as error nodes.
"""

import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.bench.tiny_lm import mlp_clt
from pipeline.circuits import replacement
from pipeline.circuits.attribution import TraceOptions, attribute, scores
from pipeline.circuits.lens import convert
from pipeline.circuits.transcoders import Member, check
from pipeline.config import ModelConfig
from pipeline.export.runs import load_run
from pipeline.models.loading import pick_device

TEXT = (
    "The history of the city begins with a small market on the river, where traders from the hills sold wool "
    "and salt to the fishermen of the coast. Over the centuries the market grew into a town, the town built walls, "
    "and the walls were torn down again when the railway arrived and the factories needed room to grow. "
)
COLUMNS = ("length", "max_feature_nodes", "seconds", "peak_mb", "attribute_mb", "nodes", "feature_nodes",
           "replacement_score", "completeness_score")  # fmt: skip


@dataclass(frozen=True)
class Case:
    model: str  # model.name of the traced model
    run: str  # run folder of the dictionary; empty = the tiny GPT-2's exact MLP CLT
    length: int  # prompt tokens, BOS included
    max_feature_nodes: int  # 0 = every active feature
    batch_size: int  # source nodes per backward pass
    offload: str | None  # None, "cpu" or "disk"
    device: str  # torch device; auto = cuda when present


def members(case: Case) -> list[Member]:
    if not case.run:
        return [mlp_clt(Path(case.model))]
    run = load_run(Path(case.run), "--run")
    check(run.coder, run.source, run.id, "--run")
    return [(run.coder, run.source)]


def prompt_ids(model, length: int) -> torch.Tensor:
    """The first `length` token ids (BOS first) of `TEXT`, repeated until it is long enough."""
    ids = replacement.tokens(model, TEXT)
    while len(ids) < length:
        ids = torch.cat([ids, ids[1:]])
    return ids[:length]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kilobytes on Linux


def measure(case: Case) -> dict:
    """One case's figures (the `COLUMNS`), measured in the calling process."""
    device = pick_device(case.device)
    model = replacement.dictionary_model(convert(ModelConfig(name=case.model), device), members(case), "bench", device)
    token_ids = prompt_ids(model, case.length)
    options = TraceOptions(case.batch_size, case.max_feature_nodes or None, case.offload)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_mb(device)
    start = time.perf_counter()
    graph = attribute(model, token_ids, options)
    peak = _peak_mb(device)
    seconds = time.perf_counter() - start
    replacement_score, completeness_score = scores(graph)
    return {
        "length": case.length, "max_feature_nodes": case.max_feature_nodes, "seconds": seconds, "peak_mb": peak,
        "attribute_mb": peak - before, "nodes": int(graph.adjacency_matrix.shape[0]),
        "feature_nodes": int(len(graph.selected_features)), "replacement_score": replacement_score,
        "completeness_score": completeness_score,
    }  # fmt: skip


def _measured(fields: dict) -> dict:
    return measure(Case(**fields))


def cost_table(cases: list[Case], report=None) -> list[dict]:
    """Each case's figures, each measured in a fresh process; `report(row)` is called as each finishes."""
    rows = []
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no memory or CUDA state of this one
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for row in pool.map(_measured, [asdict(case) for case in cases]):
            rows.append(row)
            if report:
                report(row)
    return rows


def print_header() -> None:
    print(f"{'tokens':>6} {'max nodes':>9} {'seconds':>8} {'peak MB':>8} {'attr MB':>8} {'nodes':>6} "
          f"{'features':>8} {'replace':>7} {'complete':>8}")  # fmt: skip


def print_row(row: dict) -> None:
    cap = row["max_feature_nodes"] or "all"
    print(
        f"{row['length']:>6} {cap:>9} {row['seconds']:>8.2f} {row['peak_mb']:>8.0f} {row['attribute_mb']:>8.0f} "
        f"{row['nodes']:>6} {row['feature_nodes']:>8} {row['replacement_score']:>7.3f} "
        f"{row['completeness_score']:>8.3f}",
        flush=True,
    )
