"""The folder sparsify's `SparseCoder.load_from_disk` reads: `cfg.json` and `sae.safetensors`.

sparsify's coders select the k largest latents of each row and subtract b_dec from an SAE's input:
a topk SAE is one exactly. Every other kind is refused (batchtopk keeps what passes its threshold,
relu and jumprelu are no top-k rule, and the pipeline's transcoders are JumpReLU).
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.coders.topk import TopKSAE
from pipeline.errors import ConfigError
from pipeline.export.folding import Folded
from pipeline.export.runs import Run

NAME = "sparsify"
LIBRARY = "sparsify"


def check(run: Run) -> None:
    if not isinstance(run.coder, TopKSAE):
        raise ConfigError(
            f"export.format: sparsify holds top-k SAEs only, not a {run.coder.kind} ({run.id}); "
            "use export.format=saelens" + (" or circuit-tracer" if run.transcodes else "")
        )


def tensors(folded: Folded) -> dict[str, torch.Tensor]:
    return {
        "encoder.weight": folded.w_enc[0],
        "encoder.bias": folded.b_enc[0],
        "W_dec": folded.w_dec[0][0].T.contiguous(),
        "b_dec": folded.b_dec[0],
    }


def config(folded: Folded) -> dict:
    n, d = folded.w_enc.shape[1:]
    return {
        "activation": "topk", "expansion_factor": 0, "normalize_decoder": True, "num_latents": n, "k": folded.k,
        "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d,
    }  # fmt: skip


def write(run: Run, folded: Folded, folder: Path) -> None:
    save_file(tensors(folded), folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps(config(folded), indent=1))


def usage(run: Run) -> str:
    """Python lines loading the uploaded folder, for the model card."""
    return 'from sparsify import SparseCoder\n\nsae = SparseCoder.load_from_hub("<user>/<repo>")'
