"""The folder SAELens's `SAE.load_from_disk` reads: `cfg.json` and `sae_weights.safetensors`.

relu -> standard, topk -> topk (with k), jumprelu -> jumprelu, batchtopk and matryoshka -> jumprelu with
their learned threshold (their inference rule), transcoder -> jumprelu_transcoder, or
jumprelu_skip_transcoder with a skip connection. A CLT spans several layers, which no SAELens
architecture does, and a PLT's transcoders would need a folder each: circuit-tracer's format holds both.
The weights act on raw activations (see `pipeline.coders.raw`); the SAE subtracts b_dec from its input only where
the pipeline's coder does (topk, batchtopk).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.coders.raw import RawWeights
from pipeline.errors import ConfigError
from pipeline.export import hooks
from pipeline.export.runs import Run

NAME = "saelens"
LIBRARY = "saelens"  # the model card's library_name
FORMAT_VERSION = "6.0.0"  # the SAELens release whose folder format this writes (6.x)
# How TransformerLens must load the model to compute the activations the dictionary was trained on.
MODEL_KWARGS = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}


def check(run: Run) -> None:
    if run.coder.layered:
        raise ConfigError(
            f"export.format: SAELens holds one layer's SAE or transcoder, not a {run.coder.kind} "
            f"({run.id}); use export.format=circuit-tracer"
        )


def architecture(folded: RawWeights, transcodes: bool) -> str:
    if not transcodes:
        return {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[folded.activation]
    return "jumprelu_skip_transcoder" if folded.w_skip is not None else "jumprelu_transcoder"


def config(run: Run, folded: RawWeights) -> dict:
    source, arch = run.source, architecture(folded, run.transcodes)
    d_out, n, d_in = folded.w_dec[0].shape[1:] + folded.w_enc.shape[2:]
    cfg = {
        "architecture": arch, "d_in": d_in, "d_sae": n, "dtype": "float32", "device": "cpu",
        # Where the coder subtracts a bias from its input, it is its decoder bias (topk, batchtopk), as SAELens's.
        "apply_b_dec_to_input": bool(folded.pre_bias.any()), "normalize_activations": "none",
        "reshape_activations": "none",
    }  # fmt: skip
    if arch == "topk":
        cfg |= {"k": folded.k, "rescale_acts_by_decoder_norm": False}
    if run.transcodes:
        cfg["d_out"] = d_out
    metadata = {
        "sae_lens_version": FORMAT_VERSION,
        "model_name": source["model"]["name"],
        "model_revision": source["model"]["revision"],
        "model_from_pretrained_kwargs": MODEL_KWARGS,
        "hook_name": hooks.transformer_lens(source["inputs"][0], source["model"]),
        "hook_head_index": None,
        "context_size": source["context_len"],
        "prepend_bos": source["prepend_bos"],
        "dataset_path": source["dataset"]["name"],
        "exclude_special_tokens": source["bos_dropped"],
    }
    if run.transcodes:
        metadata["hook_name_out"] = hooks.transformer_lens(source["targets"][0], source["model"])
    return cfg | {"metadata": metadata}


def tensors(folded: RawWeights) -> dict[str, torch.Tensor]:
    out = {
        "W_enc": folded.w_enc[0].T,
        "b_enc": folded.b_enc[0],
        "W_dec": folded.w_dec[0][0].T,
        "b_dec": folded.b_dec[0],
    }
    if folded.activation == "jumprelu":
        out["threshold"] = folded.threshold[0]
    if folded.w_skip is not None:
        out["W_skip"] = folded.w_skip[0]
    return {k: v.contiguous() for k, v in out.items()}


def write(run: Run, folded: RawWeights, folder: Path) -> None:
    save_file(tensors(folded), folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(config(run, folded), indent=1))


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return (
        "from huggingface_hub import snapshot_download\nfrom sae_lens import SAE\n\n"
        'sae = SAE.load_from_disk(snapshot_download("<user>/<repo>"))'
    )
