"""Prompts checked to fit the model's context with the special token circuit-tracer puts in front."""

from pipeline.errors import ConfigError


def check_lengths(prompts: list[str], tokenizer, model_name: str, n_ctx: int, field: str) -> None:
    """ConfigError naming `field` and the first prompt longer than the model's `n_ctx` positions, with its BOS."""
    from circuit_tracer.replacement_model.common import ensure_tokenized

    for i, prompt in enumerate(prompts):
        n = len(ensure_tokenized(prompt, tokenizer, "cpu", model_name))
        if n > n_ctx:
            raise ConfigError(
                f"{field}: prompt {i} ({prompt[:40]!r}...) is {n} tokens with its BOS; {model_name} accepts "
                f"at most {n_ctx}"
            )
