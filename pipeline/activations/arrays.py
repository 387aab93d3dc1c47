"""Which store arrays a coder reads and predicts, and cutting them out of batches that hold several arrays.

An SAE reads `train.hook` and reconstructs it. A transcoder reads `train.hook` (e.g. mlp_in.3) and
predicts `train.target_hook` (mlp_out.3). A CLT reads mlp_in.L and predicts mlp_out.L for every L in
`train.layers`. The training data holds every array it was opened for side by side, [rows, arrays * d],
each scaled to E||x||^2 = d by its own statistics, so one shuffled order serves all of them and every
arm of a fused grid takes its own columns of the same rows.
"""

from dataclasses import dataclass

import torch

from pipeline.coders.registry import coder_class
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.store.activation_store import ActivationStore


@dataclass(frozen=True)
class CoderArrays:
    inputs: tuple[str, ...]  # arrays the coder encodes, one per layer
    targets: tuple[str, ...] = ()  # arrays it predicts, one per input; empty: it reconstructs its input
    layered: bool = False  # a CLT: inputs and targets come stacked as [rows, layer, d]

    @property
    def arrays(self) -> tuple[str, ...]:
        """Every array read, inputs first, each once."""
        return tuple(dict.fromkeys(self.inputs + self.targets))


def transcodes(arrays: CoderArrays) -> bool:
    """Whether the coder predicts other arrays than it reads (a transcoder, a CLT): only such a coder stands in
    for the model's MLPs in a replacement model, so only it has circuits to trace."""
    return bool(arrays.targets) and arrays.targets != arrays.inputs


def data_arrays(hook: str, cfg: TrainConfig) -> CoderArrays:
    """The arrays training with `cfg` reads: mlp_in.L and mlp_out.L of `train.layers`, else `hook` and
    `train.target_hook`."""
    if not cfg.layers:
        return CoderArrays((hook,), (cfg.target_hook,) if cfg.target_hook else ())
    if cfg.target_hook:
        raise ConfigError(
            f"train.target_hook: a clt predicts mlp_out.L of train.layers; expected it empty, got {cfg.target_hook!r}"
        )
    layers = list(cfg.layers)
    if layers != sorted(set(layers)) or layers[0] < 0:
        raise ConfigError(f"train.layers: expected distinct layer numbers >= 0 in increasing order, got {layers}")
    return CoderArrays(
        tuple(f"mlp_in.{layer}" for layer in layers), tuple(f"mlp_out.{layer}" for layer in layers), layered=True
    )


_NEEDS = {"target_hook": "the array it predicts (e.g. mlp_out.3)", "layers": "the layers it spans (e.g. [0, 1, 2])"}


def coder_arrays(kind: str, hook: str, cfg: TrainConfig) -> CoderArrays:
    """The arrays a `kind` coder trained with `cfg` reads; ConfigError when the kind and the arrays disagree."""
    needs = coder_class(kind).target_field
    for field in ("target_hook", "layers"):
        if field == needs and not getattr(cfg, field):
            raise ConfigError(f"train.{field}: a {kind} needs {_NEEDS[field]}, got none")
        if field != needs and getattr(cfg, field):
            raise ConfigError(
                f"train.{field}: a {kind} coder does not use it; expected it empty, got {getattr(cfg, field)!r}"
            )
    return data_arrays(hook, cfg)


def _field_of(arrays: CoderArrays, name: str) -> str:
    """The config field that asked for array `name`."""
    return "train.layers" if arrays.layered else "train.target_hook" if name in arrays.targets else "train.hook"


def check_in_store(arrays: CoderArrays, store_hooks: list[str]) -> None:
    """Refuses, naming the config field, arrays the store was not harvested with."""
    for name in arrays.arrays:
        if name not in store_hooks:
            raise ConfigError(
                f"{_field_of(arrays, name)}: the store has hooks {store_hooks}, not {name!r}; "
                "harvest it with harvest.hooks including it"
            )


def open_arrays(store: ActivationStore, hook: str, cfg: TrainConfig) -> tuple[tuple[str, ...], int, dict[str, float]]:
    """(the arrays to read, their common width d, each one's scale to E||x||^2 = d), checked against the store."""
    arrays = data_arrays(hook, cfg)
    check_in_store(arrays, store.hooks)
    widths = {store.d_model(name) for name in arrays.arrays}
    if len(widths) > 1:
        raise ConfigError(
            f"train.target_hook: the arrays {list(arrays.arrays)} differ in width ({sorted(widths)}); expected one"
        )
    d = widths.pop()
    # Anthropic's normalisation: one scalar per array so that its mean squared norm equals d.
    scales = {name: (d / store.attrs["norm_stats"][name]["mean_sq_norm"]) ** 0.5 for name in arrays.arrays}
    return arrays.arrays, d, scales


def array_means(store: ActivationStore, arrays: tuple[str, ...]) -> dict[str, list[float] | None]:
    """Each array's mean row, unscaled, as the store recorded it; None where its records predate the means."""
    return {name: store.attrs["norm_stats"][name].get("mean") for name in arrays}


def store_source(store: ActivationStore) -> dict:
    """What a store's rows were harvested from: model, data set, contexts and the store's own path."""
    attrs = store.attrs
    model = {key: attrs["model"][key] for key in ("name", "revision", "dtype", "n_layers", "d_model", "has_lm_head")}
    return {
        "model": model,
        "dataset": attrs["dataset"],
        "context_len": attrs["layout"]["context_len"],
        "prepend_bos": True,  # every context opens with the tokenizer's BOS (or CLS) token (`text.contexts`)
        "bos_dropped": attrs["layout"]["drop_bos"],  # BOS positions were left out of the rows trained on
        "store": str(store.path),
    }


def provenance(source: dict, arrays: CoderArrays, scales: dict[str, float]) -> dict:
    """What a coder was trained on: the store's `source`, the hooks it read and predicted (one per layer) and the
    factor each array was multiplied by to bring it to E||x||^2 = d, which an export folds into the weights."""
    targets = arrays.targets or arrays.inputs
    return source | {
        "inputs": list(arrays.inputs),
        "targets": list(targets),
        "layers": [int(name.rpartition(".")[2]) for name in arrays.inputs],
        "scales": {name: scales[name] for name in dict.fromkeys(arrays.inputs + targets)},
    }


def side_by_side(parts: list[torch.Tensor]) -> torch.Tensor:
    """[rows, d] arrays as one [rows, arrays * d] tensor; a single array is returned as is, not copied."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def scale_columns(rows: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Multiplies each array's columns of float32 `rows` by its scale, in place, and returns `rows`."""
    d = rows.shape[1] // len(scales)
    for i, scale in enumerate(scales):
        rows[:, i * d : (i + 1) * d] *= scale
    return rows


class Columns:
    """Cuts one coder's inputs and target out of batches holding the arrays `held` side by side, each `d` wide."""

    def __init__(self, arrays: CoderArrays, held: tuple[str, ...], d: int, centre: torch.Tensor | None = None):
        for name in arrays.arrays:
            if name not in held:
                raise ConfigError(f"{_field_of(arrays, name)}: the training data holds {list(held)}, not {name!r}")
        self.inputs = [held.index(name) for name in arrays.inputs]
        self.targets = [held.index(name) for name in arrays.targets]
        self.layered, self.d = arrays.layered, d
        self.centre = centre  # [d] subtracted from the inputs (train.center); None: they come as they are

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(inputs, the keywords of `coder.loss` that name the target: {} for an SAE)."""
        x = self._take(batch, self.inputs)
        if self.centre is not None:
            x = x - self.centre
        return (x, {"target": self._take(batch, self.targets)}) if self.targets else (x, {})

    def _take(self, batch: torch.Tensor, positions: list[int]) -> torch.Tensor:
        rows = batch.view(len(batch), -1, self.d)
        # Integer indices give views: a list index would be copied to the device, waiting for it, every step.
        # The result is contiguous, so an arm computes on the same memory layout whatever else its grid holds.
        if not self.layered:
            return rows[:, positions[0]].contiguous()
        return torch.cat([rows[:, p : p + 1] for p in positions], 1)
