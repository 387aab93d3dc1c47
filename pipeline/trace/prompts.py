"""The prompts a trace attributes (`trace.prompts`, then the lines of `trace.prompts_file`), each checked to fit
the model's context with the special token circuit-tracer puts in front."""

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError


def read_prompts(cfg: PipelineConfig) -> list[str]:
    prompts = list(cfg.trace.prompts)
    if cfg.trace.prompts_file:
        path = Path(cfg.trace.prompts_file)
        if not path.is_file():
            raise ConfigError(f"trace.prompts_file: {path} is not a file; expected a text file, one prompt a line")
        prompts += [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(
            "trace.prompts: no prompt to trace; expected trace.prompts=[...] or a trace.prompts_file, one prompt a line"
        )
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError(f"trace.prompts: prompt {i} is empty; expected some text")
    return prompts


def check_lengths(prompts: list[str], tokenizer, model_name: str, n_ctx: int) -> None:
    """ConfigError naming the first prompt longer than the model's `n_ctx` positions, with its BOS."""
    from circuit_tracer.replacement_model.common import ensure_tokenized

    for i, prompt in enumerate(prompts):
        n = len(ensure_tokenized(prompt, tokenizer, "cpu", model_name))
        if n > n_ctx:
            raise ConfigError(
                f"trace.prompts: prompt {i} ({prompt[:40]!r}...) is {n} tokens with its BOS; {model_name} accepts "
                f"at most {n_ctx}"
            )
