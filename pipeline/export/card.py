"""The model card (README.md) of an exported folder: what was trained on what, its metrics, the sweep and its
fitted laws, and how to load it, so the folder uploads to the Hugging Face Hub as it is. The card of a set
combined from several runs lists each layer's run, what it was trained on and its metrics."""

import json

from pipeline.export.runs import Run

METRICS = ("loss", "mse", "fvu", "l0", "dead_fraction", "delta_loss", "kl", "tokens", "flops")
SWEEP = ("budget", "n_features", "lr", "sparsity", "seed", "batch_size")
LAWS = {"n_opt": "N*(C)", "tokens_opt": "T*(C)", "lr_opt": "lr*(C)"}  # fit.json key -> the law it holds


def _table(pairs: list[tuple[str, object]]) -> str:
    rows = "\n".join(f"| {key} | {_cell(value)} |" for key, value in pairs)
    return "| | |\n|---|---|\n" + rows


def _laws(fit: dict | None) -> str:
    laws = [(LAWS[key], fit[key]) for key in LAWS if isinstance((fit or {}).get(key), dict)]
    if not laws:
        return "No scaling law was fitted to this run's sweep."
    return "\n".join(f"- {name} = {law['coefficient']:.4g} C^{law['exponent']:.4g}" for name, law in laws)


def model_card(run: Run, library: str, usage: str, fit: dict | None) -> str:
    source, coder = run.source, run.coder
    model, data = source["model"], source["dataset"]
    trained = [
        ("kind", coder.kind), ("features", coder.n_features), ("d_in", coder.d_in),
        ("model", f"{model['name']} (revision {model['revision'] or 'unknown'})"),
        ("reads", ", ".join(source["inputs"])), ("predicts", ", ".join(source["targets"])),
        ("data set", _dataset(data)),
        ("context length", source["context_len"]), ("BOS prepended", source["prepend_bos"]),
        ("BOS positions trained on", not source["bos_dropped"]),
    ]  # fmt: skip
    metrics = [(key, run.metrics[key]) for key in METRICS if key in run.metrics]
    sweep = [(key, run.row[key]) for key in SWEEP if key in run.row] if run.row else []
    return f"""---
library_name: {library}
tags:
- sparse-autoencoder
- {coder.kind}
---
# {run.id}

A {coder.kind} dictionary of {coder.n_features} features on {model["name"]}, exported from its run folder.
Its weights act on the model's raw activations (the training input scales are folded in).

## Trained on

{_table(trained)}

Input scales folded into the weights: `{json.dumps(source["scales"])}`

## Metrics (held-out rows)

{_table(metrics)}

## Sweep

{_table(sweep) if sweep else "Trained alone, not as an arm of a sweep."}

{_laws(fit)}

## Loading

```python
{usage}
```

Upload this folder as it is: `hf upload <user>/<repo> <this folder> .`
"""


def set_card(name: str, runs: list[Run], library: str, usage: str) -> str:
    """The card of the transcoder set `name` made of `runs` (single-layer transcoders, in layer order)."""
    model = runs[0].source["model"]
    metrics = [key for key in METRICS if any(key in run.metrics for run in runs)]
    header = ["layer", "run", "kind", "features", "reads", "predicts", "data set", "scales", *metrics]
    rows = [
        [run.source["layers"][0], run.id, run.coder.kind, run.coder.n_features, run.source["inputs"][0],
         run.source["targets"][0], _dataset(run.source["dataset"]), json.dumps(run.source["scales"]),
         *(_cell(run.metrics.get(key, "")) for key in metrics)]
        for run in runs
    ]  # fmt: skip
    covered, n_layers = ", ".join(str(row[0]) for row in rows), model["n_layers"]
    lines = ["| " + " | ".join(map(str, row)) + " |" for row in [header, ["---"] * len(header), *rows]]
    return f"""---
library_name: {library}
tags:
- sparse-autoencoder
- transcoder
---
# {name}

A set of {len(runs)} transcoders on {model["name"]} (revision {model["revision"] or "unknown"}), one run per
layer, exported from their run folders. It covers layers {covered} of {n_layers}; the other layers' weights
are all zero, so no feature fires there. Its weights act on the model's raw activations (each run's
training input scales are folded in).

## Layers (metrics on each run's held-out rows)

{chr(10).join(lines)}

## Loading

```python
{usage}
```

Upload this folder as it is: `hf upload <user>/<repo> <this folder> .`
"""


def _dataset(data: dict) -> str:
    return f"{data['source']}: {data['name']} (split {data['split']}, seed {data['seed']})"


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
