"""Circuit Tracing's comparison in miniature, end to end through the pipeline's own commands, on the tiny GPT-2.

Harvests mlp_in.L and mlp_out.L of its 3 layers, runs a `kinds: [clt, plt]` sweep (`SWEEP`: 3
budgets x 2 widths, like sweeps/circuits.yaml) with `train.trace_prompts`, so that every arm gets
its replacement and completeness scores and next-token agreement, fits it, and traces the best CLT
(the lowest-loss CLT arm of the largest budget) with `pipeline trace`. Each command runs in a
process of its own (`python -m pipeline ...`), with W&B disabled.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pipeline.bench.tiny_lm import LAYERS, tiny_gpt2
from pipeline.layout import OutDir

HOOKS = [f"{site}.{layer}" for layer in range(LAYERS) for site in ("mlp_in", "mlp_out")]
# The tanh penalty is small: at these few steps a larger one leaves no feature active on a prompt.
SWEEP = {
    "kinds": ["clt", "plt"], "sparsity_by_kind": {"clt": 0.1, "plt": 0.1}, "layers": list(range(LAYERS)),
    "budgets": [1e8, 3e8, 1e9], "n_features": [48, 96], "lrs": [3e-3], "seeds": [0], "batch_size": 32,
    "repeat_data": True,
}  # fmt: skip
PROMPTS = ["The cat sat on the", "In the beginning was", "def add(a, b): return", "import os"]
TRACED = "The cat sat on the"


def _pipeline(*args: str) -> None:
    """`python -m pipeline ARGS` in a process of its own; its output passes through."""
    env = os.environ | {"WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env)
    if done.returncode != 0:
        sys.exit(f"pipeline {args[0]} failed (exit {done.returncode})")


def _list(items: list[str]) -> str:
    return "[" + ",".join(json.dumps(item) for item in items) + "]"  # Hydra's quoting of strings with commas


def best_clt(out: Path) -> str:
    """The run id of the lowest-loss finished CLT arm of the largest budget."""
    table = pd.read_parquet(OutDir(str(out)).sweep.results)
    done = table[(table.kind == "clt") & (table.status == "done")]
    return done[done.budget == done.budget.max()].sort_values("loss").run_id.iloc[0]


def section(report: Path, title: str) -> str:
    """The markdown section `title` of `report`, up to the next section."""
    text = report.read_text().split(f"\n{title}\n", 1)[1]
    return f"{title}\n" + text.split("\n## ", 1)[0].rstrip()


def run(out: Path) -> None:
    """The whole comparison in `out` (created), then the fit's circuit table, the trace report and where both are."""
    model = tiny_gpt2(out / "model")
    sweep = out / "circuits-tiny.yaml"
    sweep.write_text(json.dumps(SWEEP, indent=1) + "\n")  # JSON is valid YAML
    common = [f"out_dir={out}", f"model.name={model}", "tracking.mode=disabled"]
    _pipeline(
        "run", *common, f"sweep={sweep}", f"harvest.hooks={_list(HOOKS)}", "harvest.n_tokens=1200",
        "harvest.contexts_per_shard=20", "harvest.batch_contexts=4", "harvest.replicas=1", "store.contexts_per_chunk=4",
        "data.context_len=16", "train.eval_tokens=120", "train.splice_contexts=4", "train.device=cpu",
        f"train.trace_prompts={_list(PROMPTS)}", "ray.num_cpus=2", "fit.n_bootstrap=0",
    )  # fmt: skip
    best = best_clt(out)
    _pipeline("trace", *common, f"trace.arms=[{best}]", f"trace.prompts={_list([TRACED])}", "trace.batch_size=64")
    layout = OutDir(str(out))
    trace = layout.trace
    print("\n" + section(layout.fit / "report.md", "## Circuit quality in compute"))
    print("\n" + (trace / "report.md").read_text().rstrip())
    print(f"\nfit report: {layout.fit / 'report.md'}\nscores against compute: {layout.fit / 'circuit_scores.png'}")
    print(f"trace of {best}: {trace / 'report.md'}, pictures {trace / 'prompt-0.png'}")
