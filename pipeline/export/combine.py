"""Which runs make one circuit-tracer transcoder set (`export.combine`), and the set's folder name.

A set holds one transcoder per model layer, all of one width (circuit-tracer's TranscoderSet asserts it)
and read from one model, so its runs are single-layer transcoders of one model (name and revision) and
width, of distinct layers; each run's hooks are the format's own check. The name is readable and
stable: the layers and a short hash of the runs' ids, whatever order they were named in.
"""

import hashlib

from pipeline.errors import ConfigError
from pipeline.export.runs import Run


def combined(runs: list[Run], field: str = "export.combine") -> list[Run]:
    """`runs` in layer order, or ConfigError (naming `field`) naming the first run that does not fit in one set with
    the others."""
    if not runs:
        raise ConfigError(f"{field}: no finished run is selected; name the runs in export.runs or export.arms")
    for run in runs:
        if len(run.source["inputs"]) != 1:
            raise ConfigError(
                f"{field}: a transcoder set takes single-layer transcoders, one per layer; {run.id} spans "
                f"layers {run.source['layers']}: export it alone"
            )
    first = runs[0]
    for run in runs[1:]:
        for what, of in (("model", _model), ("width", lambda r: f"{r.coder.n_features} features")):
            if of(run) != of(first):
                raise ConfigError(
                    f"{field}: a transcoder set is of one {what}; {first.id} has {of(first)}, {run.id} {of(run)}"
                )
    by_layer: dict[int, Run] = {}
    for run in runs:
        layer = layer_of(run)
        if layer in by_layer:
            raise ConfigError(
                f"{field}: a transcoder set holds one transcoder per layer; {by_layer[layer].id} and "
                f"{run.id} are both of layer {layer}"
            )
        by_layer[layer] = run
    return [by_layer[layer] for layer in sorted(by_layer)]


def layer_of(run: Run) -> int:
    return run.source["layers"][0]


def _model(run: Run) -> str:
    model = run.source["model"]
    return f"{model['name']} (revision {model['revision']})"


def set_id(runs: list[Run]) -> str:
    """`transcoders_L<layers>_<hash>` of `combined` runs, e.g. transcoders_L0-2+5_1a2b3c4d for layers 0, 1, 2, 5."""
    spans: list[list[int]] = []
    for layer in map(layer_of, runs):
        if spans and spans[-1][1] == layer - 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    layers = "+".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)
    digest = hashlib.sha256("\n".join(run.id for run in runs).encode()).hexdigest()[:8]
    return f"transcoders_L{layers}_{digest}"
