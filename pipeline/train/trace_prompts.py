"""`train.trace_prompts` checked before any work: the circuit scores need the model's next-token logits, each
prompt, as circuit-tracer tokenizes it (with a BOS token before it), must fit in the model's context, and each
coder that transcodes must replace MLPs as circuit-tracer reads them (the rules `pipeline.circuits.transcoders`
applies to a trained coder)."""

import torch

from pipeline.activations.arrays import coder_arrays, transcodes
from pipeline.circuits.installed import check_installed
from pipeline.circuits.lens import hooked_config
from pipeline.circuits.prompts import check_lengths
from pipeline.circuits.transcoders import check_mlp_pairs
from pipeline.coders.registry import coder_class
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.models.loading import describe, load_tokenizer


def check_trace_prompts(cfg: PipelineConfig) -> None:
    """ConfigError naming `train.trace_prompts` for a model without a language-model head or a prompt too long."""
    prompts = list(cfg.train.trace_prompts)
    if not prompts:
        return
    check_installed("train.trace_prompts")
    info = describe(cfg.model)
    if not info.has_lm_head:
        raise ConfigError(
            f"train.trace_prompts: {cfg.model.name} has no language-model head, and circuit scores need its "
            "next-token logits; expected a causal language model or no trace prompts"
        )
    # The context of the model as tracing converts it (ConfigError for an architecture it cannot convert).
    n_ctx = hooked_config(cfg.model, torch.device("cpu")).n_ctx
    check_lengths(prompts, load_tokenizer(cfg.model), cfg.model.name, n_ctx, "train.trace_prompts")


def check_traceable(cfg: PipelineConfig, hook: str, what: str) -> None:
    """With trace prompts, ConfigError unless the coder `what` that `cfg` trains on `hook` is an SAE (which gets no
    scores) or reads mlp_in.L and predicts mlp_out.L of each layer, with no skip connection in a CLT."""
    if not cfg.train.trace_prompts:
        return
    arrays = coder_arrays(cfg.coder.kind, cfg.train.hook or hook, cfg.train)
    if not transcodes(arrays):
        return
    clt_skip = coder_class(cfg.coder.kind).cross_layer and getattr(cfg.coder, "skip_connection", False)
    check_mlp_pairs(clt_skip, arrays.inputs, arrays.targets, what, "train.trace_prompts")
