"""`coder.kind` -> coder class; building from a config and loading from a folder."""

import json
from pathlib import Path

from pipeline.coders.base import CONFIG, WEIGHTS, Coder
from pipeline.coders.batchtopk import BatchTopKSAE
from pipeline.coders.clt import CrossLayerTranscoder
from pipeline.coders.jumprelu import JumpReluSAE
from pipeline.coders.relu import ReluSAE
from pipeline.coders.topk import TopKSAE
from pipeline.coders.transcoder import Transcoder
from pipeline.config import CoderConfig
from pipeline.errors import ConfigError

KINDS: dict[str, type[Coder]] = {
    cls.kind: cls for cls in (ReluSAE, TopKSAE, BatchTopKSAE, JumpReluSAE, Transcoder, CrossLayerTranscoder)
}

_TOPK_HPARAMS = {k: k for k in ("k", "aux_k", "aux_k_coefficient", "dead_tokens_threshold")}
_JUMPRELU_HPARAMS = {
    "l1_coefficient": "l1_coefficient",
    "penalty": "jumprelu_penalty",
    "bandwidth": "jumprelu_bandwidth",
    "init_threshold": "init_threshold",
    "tanh_scale": "tanh_scale",
    "preact_coefficient": "preact_coefficient",
    "init_decoder_norm": "init_decoder_norm",
}
_TRANSCODER_HPARAMS = _JUMPRELU_HPARAMS | {"skip_connection": "skip_connection"}

# Per kind: constructor keyword -> the CoderConfig field that supplies it. Each kind gets exactly these.
HPARAMS: dict[str, dict[str, str]] = {
    "relu": {"l1_coefficient": "l1_coefficient", "init_decoder_norm": "init_decoder_norm"},
    "topk": _TOPK_HPARAMS,
    "batchtopk": _TOPK_HPARAMS,
    "jumprelu": _JUMPRELU_HPARAMS,
    "transcoder": _TRANSCODER_HPARAMS,
    "clt": _TRANSCODER_HPARAMS,
}

# Per kind: keyword of `training_flops` -> the CoderConfig field that supplies it (the FLOP count depends on these).
FLOP_HPARAMS: dict[str, dict[str, str]] = {
    "topk": {"k": "k"},
    "batchtopk": {"k": "k"},
    "transcoder": {"skip_connection": "skip_connection"},
    "clt": {"skip_connection": "skip_connection"},
}

# Kinds whose features are split over several layers; `build` gives them the number of layers read.
LAYERED = ("clt",)

# Kinds that predict other arrays than they read -> the field (of TrainConfig and of a sweep file) naming those.
TARGET_FIELD = {"transcoder": "target_hook", "clt": "layers"}


# Kinds whose loss accepts weights stacked along a leading arm dimension (`pipeline.train.stack`)
# -> the coder fields that may differ between the arms of one stack.
STACKABLE: dict[str, tuple[str, ...]] = {
    "relu": ("l1_coefficient",), "jumprelu": ("l1_coefficient",), "topk": (), "batchtopk": (),
    "transcoder": ("l1_coefficient",), "clt": ("l1_coefficient",),
}  # fmt: skip

# The sweep's `sparsity` values set this field: a penalty lambda, or the active latents per row k.
SPARSITY_FIELD = {
    "relu": "l1_coefficient", "jumprelu": "l1_coefficient", "topk": "k", "batchtopk": "k",
    "transcoder": "l1_coefficient", "clt": "l1_coefficient",
}  # fmt: skip


def coder_class(kind: str) -> type[Coder]:
    if kind not in KINDS:
        raise ConfigError(f"coder.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def hparams(cfg: CoderConfig) -> dict:
    """The constructor keywords of `cfg.kind`, read from the config."""
    coder_class(cfg.kind)
    return {kwarg: getattr(cfg, field) for kwarg, field in HPARAMS[cfg.kind].items()}


def _layers(kind: str, n_layers: int) -> dict:
    """The `n_layers` keyword for a layered kind; every other kind reads one layer."""
    if kind in LAYERED:
        return {"n_layers": n_layers}
    if n_layers != 1:
        raise ConfigError(f"train.layers: only a clt spans several layers; a {kind} coder reads one array, got {n_layers}")
    return {}


def build(cfg: CoderConfig, d_in: int, n_layers: int = 1) -> Coder:
    """A `cfg.kind` coder over `d_in`-wide activations of `n_layers` layers (more than 1 only for a clt)."""
    if cfg.n_features <= 0:
        raise ConfigError(f"coder.n_features: expected a positive width, got {cfg.n_features}")
    return coder_class(cfg.kind)(d_in, cfg.n_features, **hparams(cfg), **_layers(cfg.kind, n_layers))


def training_flops(cfg: CoderConfig, d_in: int, n_layers: int = 1) -> float:
    """FLOPs per training token of the coder `build(cfg, d_in, n_layers)` would make, without making it."""
    flop_args = {kwarg: getattr(cfg, field) for kwarg, field in FLOP_HPARAMS.get(cfg.kind, {}).items()}
    return coder_class(cfg.kind).training_flops(d_in, cfg.n_features, **flop_args, **_layers(cfg.kind, n_layers))


def load(folder: Path) -> Coder:
    """A saved coder; weights come only from safetensors, never from pickles."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / CONFIG).read_text())
    kind, d_in, n_features = config.pop("kind"), config.pop("d_in"), config.pop("n_features")
    coder = coder_class(kind)(d_in, n_features, **config)
    coder.load_state_dict(load_file(Path(folder) / WEIGHTS))
    return coder
