"""`train.trace_prompts` checked before any work: the circuit scores need the model's next-token logits, and each
prompt, as circuit-tracer tokenizes it (with a BOS token before it), must fit in the model's context."""

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
    if not info.max_positions:
        return
    from circuit_tracer.replacement_model.common import ensure_tokenized

    tokenizer = load_tokenizer(cfg.model)
    for prompt in prompts:
        n_tokens = len(ensure_tokenized(prompt, tokenizer, "cpu", cfg.model.name))
        if n_tokens > info.max_positions:
            raise ConfigError(
                f"train.trace_prompts: {prompt[:40]!r} is {n_tokens} tokens with BOS; {cfg.model.name} accepts at "
                f"most {info.max_positions}"
            )
