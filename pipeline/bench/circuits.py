"""Circuit tracing benchmark: what one prompt's attribution graph costs by prompt length, and the CLT-vs-PLT sweep.

    python -m pipeline.bench.circuits [--lengths 8 16 32 64] [--max-feature-nodes 0 1000 500] [--model M --run R]
    python -m pipeline.bench.circuits --sweep [--out DIR]

Without `--sweep`: the seconds and peak memory of circuit-tracer's `attribute` for each prompt length
and cap on feature nodes, the graph's nodes and its scores (`pipeline.bench.trace_cost`), on the
tiny GPT-2 built here with its exact MLP CLT, or on `--model` with the trained CLT or transcoder
of `--run`. With `--sweep`: a CLT and per-layer transcoder sweep of the tiny GPT-2 with circuit
scores, fitted and its best CLT traced (`pipeline.bench.circuit_sweep`).
"""

import argparse
import os
import tempfile
from pathlib import Path

from pipeline.bench import circuit_sweep
from pipeline.bench.tiny_lm import tiny_gpt2
from pipeline.bench.trace_cost import Case, cost_table, print_header, print_row
from pipeline.circuits.installed import check_installed
from pipeline.circuits.lens import hooked_config
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.loading import pick_device


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.circuits", description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64], help="prompt tokens, BOS included")
    caps = "caps on a graph's feature nodes (trace.max_feature_nodes); 0 = every active feature"
    parser.add_argument("--max-feature-nodes", type=int, nargs="+", default=[0, 1000, 500], help=caps)
    parser.add_argument("--batch-size", type=int, default=256, help="source nodes per backward pass (trace.batch_size)")
    parser.add_argument("--offload", choices=["none", "cpu", "disk"], default="none", help="trace.offload")
    parser.add_argument("--device", default="auto", help="torch device of the trace; auto = cuda when present")
    parser.add_argument("--model", default="", help="model.name of a model to trace; default: the tiny GPT-2")
    parser.add_argument("--run", type=Path, default=None, help="run folder of a CLT or transcoder of --model")
    parser.add_argument("--sweep", action="store_true", help="run the CLT-vs-PLT sweep of the tiny GPT-2 instead")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder kept with the tiny model and the sweep's outputs"
    )
    return parser


def _check(parser: argparse.ArgumentParser, args) -> None:
    """Every option checked before any work, each refusal one line naming the option."""
    try:
        check_installed("pipeline.bench.circuits")
    except ConfigError as err:
        parser.error(str(err))
    if bool(args.model) != bool(args.run):
        parser.error("--model and --run: expected both (a model and its trained dictionary) or neither")
    if args.run is not None and not (args.run / "metrics.json").exists():
        parser.error(f"--run: expected a finished run folder (with metrics.json), got {args.run}")
    if min(args.lengths) < 2:
        parser.error(f"--lengths: expected at least 2 tokens (BOS and one more), got {min(args.lengths)}")
    if min(args.max_feature_nodes) < 0:
        parser.error(f"--max-feature-nodes: expected 0 (all) or more, got {min(args.max_feature_nodes)}")
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected at least 1, got {args.batch_size}")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out: expected a new or empty folder, got {args.out}")
    if args.out is not None and not os.access(args.out.parent, os.W_OK):
        parser.error(f"--out: expected a folder in a writable folder, got {args.out}")
    if args.model:
        try:
            n_ctx = hooked_config(ModelConfig(name=args.model), pick_device("cpu")).n_ctx
        except ConfigError as error:
            parser.error(f"--model: {error}")
        if max(args.lengths) > n_ctx:
            parser.error(f"--lengths: expected at most {n_ctx} tokens, the context of {args.model}")


def cost(args, folder: Path) -> list[dict]:
    model = args.model or str(tiny_gpt2(folder / "model"))
    offload = None if args.offload == "none" else args.offload
    cases = [
        Case(model, str(args.run or ""), length, cap, args.batch_size, offload, args.device)
        for length in args.lengths
        for cap in args.max_feature_nodes
    ]
    what = f"{args.run} on {args.model}" if args.run else "the exact MLP CLT of the tiny GPT-2 (3 x 128 features)"
    print(f"attribute of one prompt through {what}, batch {args.batch_size}, offload {args.offload}", flush=True)
    print_header()
    return cost_table(cases, print_row)


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    _check(parser, args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(exist_ok=True)
        if args.sweep:
            circuit_sweep.run(folder)
        else:
            cost(args, folder)


if __name__ == "__main__":
    main()
