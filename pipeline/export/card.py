"""The model card (README.md) of an exported folder: what was trained on what, its metrics, the sweep and its
fitted laws, and how to load it, so the folder uploads to the Hugging Face Hub as it is."""

import json

from pipeline.export.runs import Run

METRICS = ("loss", "mse", "fvu", "l0", "dead_fraction", "delta_loss", "kl", "tokens", "flops")
SWEEP = ("budget", "n_features", "lr", "sparsity", "seed", "batch_size")
LAWS = {"n_opt": "N*(C)", "tokens_opt": "T*(C)", "lr_opt": "lr*(C)"}  # fit.json key -> the law it holds


def _table(pairs: list[tuple[str, object]]) -> str:
    rows = "\n".join(f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |"
                     for key, value in pairs)  # fmt: skip
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
        ("data set", f"{data['source']}: {data['name']} (split {data['split']}, seed {data['seed']})"),
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
