"""`coder.kind` -> coder class; building from a config and loading from a folder."""

import json
from pathlib import Path

from pipeline.coders.base import CONFIG, WEIGHTS, Coder
from pipeline.coders.relu import ReluSAE
from pipeline.config import CoderConfig
from pipeline.errors import ConfigError

KINDS: dict[str, type[Coder]] = {ReluSAE.kind: ReluSAE}


def coder_class(kind: str) -> type[Coder]:
    if kind not in KINDS:
        raise ConfigError(f"coder.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def build(cfg: CoderConfig, d_in: int) -> Coder:
    if cfg.n_features <= 0:
        raise ConfigError(f"coder.n_features: expected a positive width, got {cfg.n_features}")
    return coder_class(cfg.kind)(
        d_in, cfg.n_features, l1_coefficient=cfg.l1_coefficient, init_decoder_norm=cfg.init_decoder_norm
    )


def load(folder: Path) -> Coder:
    """A saved coder; weights come only from safetensors, never from pickles."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / CONFIG).read_text())
    kind, d_in, n_features = config.pop("kind"), config.pop("d_in"), config.pop("n_features")
    coder = coder_class(kind)(d_in, n_features, **config)
    coder.load_state_dict(load_file(Path(folder) / WEIGHTS))
    return coder
