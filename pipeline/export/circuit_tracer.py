"""circuit-tracer's two folders: a per-layer transcoder set and a cross-layer transcoder (CLT).

Both replace the MLP of every layer of the model, so a transcoder reads `mlp_in.L` and predicts
`mlp_out.L`. A transcoder run becomes a set (`config.yaml` with `model_kind: transcoder_set` and
`layer_{i}.safetensors` for each of the model's layers, the layers it does not cover all zeros:
no feature there ever fires); so does a run of per-layer transcoders (a PLT), one file per layer it
spans. A CLT run becomes `model_kind: cross_layer_transcoder` with
`W_enc_{i}.safetensors` and `W_dec_{i}.safetensors` per model layer, W_dec_i of shape
[features, layers - i, d_model], zero where the CLT has no layer or no decoder. circuit-tracer 0.5.0
reads a transcoder's skip connection (`W_skip`) but not a CLT's, so a CLT with one is refused. SAEs
replace no MLP and are refused. Several single-layer transcoder runs, one per layer, also make one set
(`write_set`; the export stage decides which runs do).
"""

from dataclasses import replace
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from pipeline.coders.raw import RawWeights
from pipeline.errors import ConfigError
from pipeline.export import hooks
from pipeline.export.runs import Run

NAME = "circuit-tracer"
LIBRARY = "circuit-tracer"
CONFIG = "config.yaml"


def check(run: Run) -> None:
    if not run.transcodes:
        raise ConfigError(
            f"export.format: circuit-tracer replaces MLPs with transcoders, not with a {run.coder.kind} SAE "
            f"({run.id}); use export.format=saelens"
        )
    if run.coder.cross_layer and run.coder.skip_connection:
        raise ConfigError(
            f"export.format: circuit-tracer reads no skip connection of a cross-layer transcoder from disk, and "
            f"{run.id} has one; train it with coder.skip_connection=false"
        )
    for name in run.source["inputs"]:
        hooks.circuit_tracer(name, "input")
    for name in run.source["targets"]:
        hooks.circuit_tracer(name, "output")
    for read, predicted in zip(run.source["inputs"], run.source["targets"], strict=True):
        if hooks.split(read)[1] != hooks.split(predicted)[1]:
            raise ConfigError(
                f"export.format: circuit-tracer's transcoder of layer L predicts mlp_out.L from mlp_in.L; "
                f"{run.id} predicts {predicted} from {read}"
            )


def config(run: Run) -> dict:
    source = run.source
    return {
        "model_kind": "cross_layer_transcoder" if run.coder.cross_layer else "transcoder_set",
        "model_name": source["model"]["name"],
        "feature_input_hook": hooks.circuit_tracer(source["inputs"][0], "input"),
        "feature_output_hook": hooks.circuit_tracer(source["targets"][0], "output"),
    }


def _padded(run: Run, tensor: torch.Tensor) -> torch.Tensor:
    """[model layers, ...]: the coder's per-layer `tensor` ([coder layers, ...]) at the layers it covers, else 0."""
    out = tensor.new_zeros(run.source["model"]["n_layers"], *tensor.shape[1:])
    out[run.source["layers"]] = tensor
    return out


def _transcoder(folded: RawWeights, skip: bool) -> dict[str, torch.Tensor]:
    """One layer's file of a set: a single-layer coder's weights; with `skip`, a zero `W_skip` where it has none
    (circuit-tracer gives every layer a skip connection when the first layer has one)."""
    tensors = {
        "W_enc": folded.w_enc[0], "W_dec": folded.w_dec[0][0].mT, "b_enc": folded.b_enc[0], "b_dec": folded.b_dec[0],
        "activation_function.threshold": folded.threshold[0],
    }  # fmt: skip
    if skip:
        no_skip = folded.b_dec.new_zeros(folded.b_dec.shape[1], folded.w_enc.shape[2])
        tensors["W_skip"] = folded.w_skip[0] if folded.w_skip is not None else no_skip
    return tensors


def transcoder_set(members: list[tuple[Run, RawWeights]]) -> dict[str, dict[str, torch.Tensor]]:
    """{file name: its tensors}: one transcoder per model layer, each member's (single-layer runs of one model and
    width, with their folded weights, of distinct layers) at its layer; zeros, which never fire, elsewhere."""
    skip = any(folded.w_skip is not None for _, folded in members)
    at = {run.source["layers"][0]: _transcoder(folded, skip) for run, folded in members}
    zeros = {name: torch.zeros_like(t) for name, t in next(iter(at.values())).items()}
    n_layers = members[0][0].source["model"]["n_layers"]
    return {f"layer_{layer}.safetensors": at.get(layer, zeros) for layer in range(n_layers)}


def cross_layer_transcoder(run: Run, folded: RawWeights) -> dict[str, dict[str, torch.Tensor]]:
    """{file name: its tensors}: the encoder and the decoders of each model layer's features."""
    w_enc, b_enc, threshold = (_padded(run, t) for t in (folded.w_enc, folded.b_enc, folded.threshold))
    b_dec, layers = _padded(run, folded.b_dec), run.source["layers"]
    n_layers, n, d = w_enc.shape
    files = {}
    for layer in range(n_layers):
        w_dec = torch.zeros(n, n_layers - layer, d)
        if layer in layers:
            i = layers.index(layer)
            for j, target in enumerate(layers[i:]):  # the coder's decoder j of its layer i writes to layers[i + j]
                w_dec[:, target - layer] = folded.w_dec[i][j].T
        files[f"W_enc_{layer}.safetensors"] = {
            f"W_enc_{layer}": w_enc[layer], f"b_enc_{layer}": b_enc[layer], f"b_dec_{layer}": b_dec[layer],
            f"threshold_{layer}": threshold[layer],
        }  # fmt: skip
        files[f"W_dec_{layer}.safetensors"] = {f"W_dec_{layer}": w_dec}
    return files


def write(run: Run, folded: RawWeights, folder: Path) -> None:
    files = cross_layer_transcoder(run, folded) if run.coder.cross_layer else transcoder_set(_per_layer(run, folded))
    _save(files, config(run), folder)


def _per_layer(run: Run, folded: RawWeights) -> list[tuple[Run, RawWeights]]:
    """A run whose layers write only to themselves as single-layer members of a set, one per layer it spans."""
    layers = run.source["layers"]
    return [(replace(run, source=run.source | {"layers": [layer]}), folded.layer(i)) for i, layer in enumerate(layers)]


def write_set(members: list[tuple[Run, RawWeights]], folder: Path) -> None:
    """Several single-layer transcoder runs (see `transcoder_set`) as one transcoder set in `folder`."""
    _save(transcoder_set(members), config(members[0][0]), folder)


def _save(files: dict[str, dict[str, torch.Tensor]], cfg: dict, folder: Path) -> None:
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / name)
    (folder / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return (
        "from circuit_tracer import ReplacementModel\n\n"
        f'model = ReplacementModel.from_pretrained("{run.source["model"]["name"]}", "<user>/<repo>")'
    )
