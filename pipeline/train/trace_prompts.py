"""`train.trace_prompts` checked before any work: the circuit scores need the model's next-token logits, each
prompt, as circuit-tracer tokenizes it (with a BOS token before it), must fit in the model's context, and each
coder that transcodes must replace MLPs as circuit-tracer reads them (`pipeline.circuits.transcoders.check`
holds the same rules for a trained coder)."""

import torch

from pipeline.activations.arrays import coder_arrays, transcodes
from pipeline.circuits.lens import hooked_config
from pipeline.coders.registry import coder_class
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError
from pipeline.models.loading import describe, load_tokenizer


def check_trace_prompts(cfg: PipelineConfig) -> None:
    """ConfigError naming `train.trace_prompts` for a model without a language-model head or a prompt too long."""
    prompts = list(cfg.train.trace_prompts)
    if not prompts:
        return
    info = describe(cfg.model)
    if not info.has_lm_head:
        raise ConfigError(
            f"train.trace_prompts: {cfg.model.name} has no language-model head, and circuit scores need its "
            "next-token logits; expected a causal language model or no trace prompts"
        )
    from circuit_tracer.replacement_model.common import ensure_tokenized

    # The context of the model as tracing converts it (ConfigError for an architecture it cannot convert).
    n_ctx = hooked_config(cfg.model, torch.device("cpu")).n_ctx
    tokenizer = load_tokenizer(cfg.model)
    for prompt in prompts:
        n_tokens = len(ensure_tokenized(prompt, tokenizer, "cpu", cfg.model.name))
        if n_tokens > n_ctx:
            raise ConfigError(
                f"train.trace_prompts: {prompt[:40]!r} is {n_tokens} tokens with BOS; {cfg.model.name} accepts at "
                f"most {n_ctx}"
            )


def check_traceable(cfg: PipelineConfig, hook: str, what: str) -> None:
    """With trace prompts, ConfigError unless the coder `what` that `cfg` trains on `hook` is an SAE (which gets no
    scores) or reads mlp_in.L and predicts mlp_out.L of each layer, with no skip connection in a CLT."""
    if not cfg.train.trace_prompts:
        return
    arrays = coder_arrays(cfg.coder.kind, cfg.train.hook or hook, cfg.train)
    if not transcodes(arrays):
        return
    if coder_class(cfg.coder.kind).cross_layer and getattr(cfg.coder, "skip_connection", False):
        raise ConfigError(
            f"train.trace_prompts: {what} is a {cfg.coder.kind} with a skip connection, which circuit-tracer does not "
            "read; expected coder.skip_connection=false or no trace prompts"
        )
    for read, predicted in zip(arrays.inputs, arrays.targets):
        site_in, layer_in = read.rpartition(".")[::2]
        site_out, layer_out = predicted.rpartition(".")[::2]
        if (site_in, site_out) != ("mlp_in", "mlp_out") or layer_in != layer_out:
            raise ConfigError(
                f"train.trace_prompts: circuit-tracer's transcoder of layer L predicts mlp_out.L from mlp_in.L; "
                f"{what} predicts {predicted} from {read}"
            )
