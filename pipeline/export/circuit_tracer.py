"""circuit-tracer's two folders: a per-layer transcoder set and a cross-layer transcoder (CLT).

Both replace the MLP of every layer of the model, so a transcoder reads `mlp_in.L` and predicts
`mlp_out.L`. A transcoder run becomes a set (`config.yaml` with `model_kind: transcoder_set` and
`layer_{i}.safetensors` for each of the model's layers, the layers it does not cover all zeros:
no feature there ever fires). A CLT run becomes `model_kind: cross_layer_transcoder` with
`W_enc_{i}.safetensors` and `W_dec_{i}.safetensors` per model layer, W_dec_i of shape
[features, layers - i, d_model], zero where the CLT has no layer or no decoder. circuit-tracer 0.5.0
reads a transcoder's skip connection (`W_skip`) but not a CLT's, so a CLT with one is refused. SAEs
replace no MLP and are refused.
"""

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from pipeline.errors import ConfigError
from pipeline.export import hooks
from pipeline.export.folding import Folded
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
    if run.coder.layered and run.coder.skip_connection:
        raise ConfigError(
            f"export.format: circuit-tracer reads no skip connection of a cross-layer transcoder from disk, and "
            f"{run.id} has one; train it with coder.skip_connection=false"
        )
    for name in run.source["inputs"]:
        hooks.circuit_tracer(name, "input")
    for name in run.source["targets"]:
        hooks.circuit_tracer(name, "output")


def config(run: Run) -> dict:
    source = run.source
    return {
        "model_kind": "cross_layer_transcoder" if run.coder.layered else "transcoder_set",
        "model_name": source["model"]["name"],
        "feature_input_hook": hooks.circuit_tracer(source["inputs"][0], "input"),
        "feature_output_hook": hooks.circuit_tracer(source["targets"][0], "output"),
    }


def _padded(run: Run, tensor: torch.Tensor) -> torch.Tensor:
    """[model layers, ...]: the coder's per-layer `tensor` ([coder layers, ...]) at the layers it covers, else 0."""
    out = tensor.new_zeros(run.source["model"]["n_layers"], *tensor.shape[1:])
    out[run.source["layers"]] = tensor
    return out


def transcoder_set(run: Run, folded: Folded) -> dict[str, dict[str, torch.Tensor]]:
    """{file name: its tensors}: one transcoder per model layer."""
    w_enc, b_enc, threshold = (_padded(run, t) for t in (folded.w_enc, folded.b_enc, folded.threshold))
    w_dec, b_dec = _padded(run, folded.w_dec[0][0].mT.unsqueeze(0)), _padded(run, folded.b_dec)
    w_skip = _padded(run, folded.w_skip) if folded.w_skip is not None else None
    files = {}
    for layer in range(len(w_enc)):
        tensors = {
            "W_enc": w_enc[layer], "W_dec": w_dec[layer], "b_enc": b_enc[layer], "b_dec": b_dec[layer],
            "activation_function.threshold": threshold[layer],
        }  # fmt: skip
        if w_skip is not None:
            tensors["W_skip"] = w_skip[layer]
        files[f"layer_{layer}.safetensors"] = tensors
    return files


def cross_layer_transcoder(run: Run, folded: Folded) -> dict[str, dict[str, torch.Tensor]]:
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


def write(run: Run, folded: Folded, folder: Path) -> None:
    files = cross_layer_transcoder(run, folded) if run.coder.layered else transcoder_set(run, folded)
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / name)
    (folder / CONFIG).write_text(yaml.safe_dump(config(run), sort_keys=False))


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return (
        "from circuit_tracer import ReplacementModel\n\n"
        f'model = ReplacementModel.from_pretrained("{run.source["model"]["name"]}", "<user>/<repo>")'
    )
