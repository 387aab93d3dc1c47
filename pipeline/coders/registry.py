"""`coder.kind` -> coder class; building from a config and loading from a folder."""

import json
from pathlib import Path

from pipeline.coders.base import CONFIG, WEIGHTS, Coder
from pipeline.coders.batchtopk import BatchTopKSAE
from pipeline.coders.jumprelu import JumpReluSAE
from pipeline.coders.relu import ReluSAE
from pipeline.coders.topk import TopKSAE
from pipeline.config import CoderConfig
from pipeline.errors import ConfigError

KINDS: dict[str, type[Coder]] = {cls.kind: cls for cls in (ReluSAE, TopKSAE, BatchTopKSAE, JumpReluSAE)}

_TOPK_HPARAMS = {k: k for k in ("k", "aux_k", "aux_k_coefficient", "dead_tokens_threshold")}

# Per kind: constructor keyword -> the CoderConfig field that supplies it. Each kind gets exactly these.
HPARAMS: dict[str, dict[str, str]] = {
    "relu": {"l1_coefficient": "l1_coefficient", "init_decoder_norm": "init_decoder_norm"},
    "topk": _TOPK_HPARAMS,
    "batchtopk": _TOPK_HPARAMS,
    "jumprelu": {
        "l1_coefficient": "l1_coefficient",
        "penalty": "jumprelu_penalty",
        "bandwidth": "jumprelu_bandwidth",
        "init_threshold": "init_threshold",
        "tanh_scale": "tanh_scale",
        "preact_coefficient": "preact_coefficient",
        "init_decoder_norm": "init_decoder_norm",
    },
}


# The sweep's `sparsity` values set this field: a penalty lambda, or the active latents per row k.
SPARSITY_FIELD = {"relu": "l1_coefficient", "jumprelu": "l1_coefficient", "topk": "k", "batchtopk": "k"}


def coder_class(kind: str) -> type[Coder]:
    if kind not in KINDS:
        raise ConfigError(f"coder.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def hparams(cfg: CoderConfig) -> dict:
    """The constructor keywords of `cfg.kind`, read from the config."""
    coder_class(cfg.kind)
    return {kwarg: getattr(cfg, field) for kwarg, field in HPARAMS[cfg.kind].items()}


def build(cfg: CoderConfig, d_in: int) -> Coder:
    if cfg.n_features <= 0:
        raise ConfigError(f"coder.n_features: expected a positive width, got {cfg.n_features}")
    return coder_class(cfg.kind)(d_in, cfg.n_features, **hparams(cfg))


def load(folder: Path) -> Coder:
    """A saved coder; weights come only from safetensors, never from pickles."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / CONFIG).read_text())
    kind, d_in, n_features = config.pop("kind"), config.pop("d_in"), config.pop("n_features")
    coder = coder_class(kind)(d_in, n_features, **config)
    coder.load_state_dict(load_file(Path(folder) / WEIGHTS))
    return coder
