"""The prompts a trace attributes: `trace.prompts`, then the lines of `trace.prompts_file`."""

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
