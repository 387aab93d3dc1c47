"""The coder kinds, one line each; building a coder from a config and loading one from a folder.

Everything else a kind is and can do it declares in its own class (see `pipeline.coders.base.Coder`).
The `coder` node of the configuration is `AnyCoderConfig`: every kind's fields, assembled here from
the kinds' own config dataclasses, so `coder.kind=X` can switch kinds on the command line; a coder
is built from only its own kind's fields. `register_schema` hands that node to Hydra: the
configuration layer lies below the coders and never imports them.
"""

import json
from dataclasses import MISSING, Field, field, fields, make_dataclass
from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore

from pipeline.coders.base import CONFIG, WEIGHTS, Coder
from pipeline.coders.batchtopk import BatchTopKSAE
from pipeline.coders.clt import CrossLayerTranscoder
from pipeline.coders.jumprelu import JumpReluSAE
from pipeline.coders.matryoshka import MatryoshkaSAE
from pipeline.coders.plt import PerLayerTranscoders
from pipeline.coders.relu import ReluSAE
from pipeline.coders.topk import TopKSAE
from pipeline.coders.transcoder import Transcoder
from pipeline.config import CoderConfig
from pipeline.config.docs import field_doc
from pipeline.errors import ConfigError

KINDS: dict[str, type[Coder]] = {
    cls.kind: cls
    for cls in (
        ReluSAE,
        TopKSAE,
        BatchTopKSAE,
        JumpReluSAE,
        MatryoshkaSAE,
        Transcoder,
        CrossLayerTranscoder,
        PerLayerTranscoders,
    )
}


def coder_class(kind: str) -> type[Coder]:
    if kind not in KINDS:
        raise ConfigError(f"coder.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def _union_fields(kinds) -> list[tuple]:
    """Every kind's own fields once each, in the order the kinds list them; a name two kinds share means one field."""
    base = {f.name for f in fields(CoderConfig)}
    union: dict[str, Field] = {}
    origin: dict[str, type] = {}  # field name -> the first kind config declaring it
    for cls in kinds:
        for f in fields(cls.config_class):
            first = union.setdefault(f.name, f)
            origin.setdefault(f.name, cls.config_class)
            if f.name not in base and _declared(first) != _declared(f):
                raise TypeError(f"{cls.kind}: field {f.name} differs from another kind's field of that name")
    return [(name, f.type, field(default=f.default, default_factory=f.default_factory,
                                 metadata={"doc": field_doc(origin[name], name)}))
            for name, f in union.items() if name not in base]  # fmt: skip


def _declared(f: Field) -> tuple:
    """A field's type and default (a list field's: the value its factory makes)."""
    return f.type, f.default_factory() if f.default_factory is not MISSING else f.default


def _check_own_fields(cfg: CoderConfig) -> None:
    """Checks the values its kind reads (building that kind's own config), and only those."""
    own_config(cfg)


AnyCoderConfig = make_dataclass(
    "AnyCoderConfig",
    _union_fields(KINDS.values()),
    bases=(CoderConfig,),
    namespace={"__post_init__": _check_own_fields},
)
AnyCoderConfig.__module__ = __name__  # pickled by reference, as Ray ships configs to its workers
AnyCoderConfig.__doc__ = "The `coder` node: every kind's fields; `kind` says which of them are read."


def own_config(cfg: CoderConfig) -> CoderConfig:
    """`cfg`'s kind's own config, with the values `cfg` gives its fields; ConfigError for a bad kind or value."""
    config_class = coder_class(cfg.kind).config_class
    return config_class(**{f.name: getattr(cfg, f.name) for f in fields(config_class)})


def register_schema() -> None:
    """Stores `AnyCoderConfig` as `coder/schema`, which every conf/coder/<kind>.yaml extends; call it before compose."""
    ConfigStore.instance().store(group="coder", name="schema", node=AnyCoderConfig)


def sparsity_setting(kind: str, sparsity: float) -> dict:
    """{the field a sweep's `sparsity` value sets for `kind`: the value, as that field's type (k is an int)}."""
    cls = coder_class(kind)
    types = {f.name: f.type for f in fields(cls.config_class)}
    return {cls.sparsity_field: types[cls.sparsity_field](sparsity)}


def _layers(cls: type[Coder], n_layers: int) -> dict:
    """The `n_layers` keyword for a layered kind; every other kind reads one layer."""
    if cls.layered:
        return {"n_layers": n_layers}
    if n_layers != 1:
        layered = " or a ".join(kind for kind, c in KINDS.items() if c.layered)
        raise ConfigError(
            f"train.layers: only a {layered} spans several layers; a {cls.kind} coder reads one array, got {n_layers}"
        )
    return {}


def build(cfg: CoderConfig, d_in: int, n_layers: int = 1) -> Coder:
    """A `cfg.kind` coder over `d_in`-wide activations of `n_layers` layers (more than 1 only for a layered kind)."""
    cls = coder_class(cfg.kind)
    own = own_config(cfg)
    return cls(d_in, own.n_features, **cls.hparams_of(own), **_layers(cls, n_layers))


def training_flops(cfg: CoderConfig, d_in: int, n_layers: int = 1) -> float:
    """FLOPs per training token of the coder `build(cfg, d_in, n_layers)` would make, built without weights."""
    with torch.device("meta"):  # draws nothing and allocates nothing
        return build(cfg, d_in, n_layers).flops_per_token()


def rebuild(config: dict) -> Coder:
    """A freshly initialised coder as `Coder.config()` describes it (the keywords of its constructor)."""
    config = dict(config)
    kind, d_in, n_features = config.pop("kind"), config.pop("d_in"), config.pop("n_features")
    return coder_class(kind)(d_in, n_features, **config)


def load(folder: Path) -> Coder:
    """A saved coder; weights come only from safetensors, never from pickles."""
    from safetensors.torch import load_file

    coder = rebuild(json.loads((Path(folder) / CONFIG).read_text()))
    coder.load_state_dict(load_file(Path(folder) / WEIGHTS))
    return coder
