"""The tensors of circuit-tracer's two folders, from a run's `source.json` and its folded weights.

A transcoder set (`model_kind: transcoder_set`) holds `layer_{i}.safetensors` for each of the model's
layers, the layers no member covers all zeros: no feature there ever fires. A cross-layer transcoder
(`model_kind: cross_layer_transcoder`) holds `W_enc_{i}.safetensors` and `W_dec_{i}.safetensors` per
model layer, W_dec_i of shape [features, layers - i, d_model], zero where the CLT has no layer or no
decoder. The export stage writes these folders for users; the tracing reads them back with
circuit-tracer's own loaders, so a graph is drawn from exactly what a user downloads.
"""

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from pipeline.coders.raw import RawWeights

CONFIG = "config.yaml"
INPUT_HOOK, OUTPUT_HOOK = "mlp.hook_in", "mlp.hook_out"  # circuit-tracer's block-relative MLP input and output
Files = dict[str, dict[str, torch.Tensor]]  # {file name: its tensors}


def folder_config(source: dict, cross_layer: bool) -> dict:
    """config.yaml of a folder of transcoders (`cross_layer`: one CLT) reading MLP inputs of `source`'s model."""
    return {
        "model_kind": "cross_layer_transcoder" if cross_layer else "transcoder_set",
        "model_name": source["model"]["name"],
        "feature_input_hook": INPUT_HOOK,
        "feature_output_hook": OUTPUT_HOOK,
    }


def _padded(source: dict, tensor: torch.Tensor) -> torch.Tensor:
    """[model layers, ...]: the coder's per-layer `tensor` ([coder layers, ...]) at the layers it covers, else 0."""
    out = tensor.new_zeros(source["model"]["n_layers"], *tensor.shape[1:])
    out[source["layers"]] = tensor
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


def per_layer(source: dict, folded: RawWeights) -> list[tuple[dict, RawWeights]]:
    """A coder whose layers write only to themselves (a transcoder, a PLT) as single-layer members of a set, one per
    layer it spans."""
    return [(source | {"layers": [layer]}, folded.layer(i)) for i, layer in enumerate(source["layers"])]


def transcoder_set(members: list[tuple[dict, RawWeights]]) -> Files:
    """One transcoder per model layer, each member's (the source and folded weights of single-layer transcoders of
    one model and width, of distinct layers) at its layer; zeros, which never fire, elsewhere."""
    skip = any(folded.w_skip is not None for _, folded in members)
    at = {source["layers"][0]: _transcoder(folded, skip) for source, folded in members}
    zeros = {name: torch.zeros_like(t) for name, t in next(iter(at.values())).items()}
    n_layers = members[0][0]["model"]["n_layers"]
    return {f"layer_{layer}.safetensors": at.get(layer, zeros) for layer in range(n_layers)}


def cross_layer_transcoder(source: dict, folded: RawWeights) -> Files:
    """The encoder and the decoders of each model layer's features."""
    w_enc, b_enc, threshold = (_padded(source, t) for t in (folded.w_enc, folded.b_enc, folded.threshold))
    b_dec, layers = _padded(source, folded.b_dec), source["layers"]
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


def save(files: Files, cfg: dict, folder: Path) -> None:
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / name)
    (folder / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
