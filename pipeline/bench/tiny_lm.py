"""The tiny causal LM the circuit benchmarks trace where no model can be downloaded, and its exact dictionary.

`tiny_gpt2` saves a seeded GPT-2 of random weights (3 layers, d 32, 2 heads, ReLU MLPs of 128 neurons,
128 positions) with the tokenizer of the embedded model (MiniLM's) to a folder, which `model.name`
then names. Its MLPs use ReLU so that a dictionary can equal them: `mlp_clt` is the CLT whose
features are the MLPs' own neurons, which traces with replacement and completeness scores of 1.
"""

from pathlib import Path

import torch

from pipeline.coders.base import Coder
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import ModelConfig
from pipeline.models.loading import load_model, resolve_path

LAYERS = 3
D_MODEL = 32
D_MLP = 4 * D_MODEL  # GPT-2's MLP width
SEED = 0


def tiny_gpt2(folder: Path) -> Path:
    """The seeded tiny GPT-2 saved in `folder` (safetensors and tokenizer files); `folder`."""
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(resolve_path(ModelConfig()))
    config = tf.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_embd=D_MODEL, n_layer=LAYERS, n_head=2, n_positions=128,
        activation_function="relu",
    )  # fmt: skip
    with torch.random.fork_rng():  # the same weights every time, whatever the caller's generator holds
        torch.manual_seed(SEED)
        tf.GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def mlp_source(model_dir: Path) -> dict:
    """The source.json of a CLT of every layer of the tiny GPT-2 in `model_dir`, trained on unscaled arrays."""
    inputs, targets = [f"mlp_in.{layer}" for layer in range(LAYERS)], [f"mlp_out.{layer}" for layer in range(LAYERS)]
    model = {"name": str(model_dir), "revision": "main", "dtype": "float32", "n_layers": LAYERS, "d_model": D_MODEL,
             "has_lm_head": True}  # fmt: skip
    scales = dict.fromkeys(inputs + targets, 1.0)
    return {"model": model, "inputs": inputs, "targets": targets, "layers": list(range(LAYERS)), "scales": scales}


@torch.no_grad()
def mlp_clt(model_dir: Path) -> tuple[Coder, dict]:
    """The CLT of `model_dir`'s tiny GPT-2 whose features are its MLP neurons (encoder c_fc, same-layer decoder c_proj,
    no cross-layer decoders, a threshold of ~0), and its source."""
    hf_model = load_model(ModelConfig(name=str(model_dir)), torch.device("cpu"))
    coder = build(AnyCoderConfig(kind="clt", n_features=LAYERS * D_MLP, skip_connection=False), D_MODEL, LAYERS)
    coder.log_threshold.fill_(-80.0)
    for w in coder.w_dec:
        w.zero_()
    for layer in range(LAYERS):
        mlp = hf_model.transformer.h[layer].mlp  # GPT-2's Conv1D: y = x @ weight + bias
        coder.w_enc[layer] = mlp.c_fc.weight.t()
        coder.b_enc[layer] = mlp.c_fc.bias
        coder.w_dec[layer][0] = mlp.c_proj.weight.t()
        coder.b_dec[layer] = mlp.c_proj.bias
    return coder.eval(), mlp_source(model_dir)
