"""The store's group attributes and the rule for when an existing store can be reused."""

import re
import shlex

from pipeline import __version__
from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError

SCHEMA_VERSION = 1

# Attributes that must match for a store to be resumed or trained on: (attribute path, config field).
_MUST_MATCH = (
    (("model", "name"), "model.name"),
    (("model", "revision"), "model.revision"),
    (("model", "dtype"), "model.dtype"),
    (("dataset", "source"), "data.source"),
    (("dataset", "name"), "data.name"),
    (("dataset", "subset"), "data.subset"),
    (("dataset", "split"), "data.split"),
    (("dataset", "seed"), "data.seed"),
    (("dataset", "context_len"), "data.context_len"),
    (("dataset", "paths"), "data.paths"),
    (("hooks",), "harvest.hooks"),
    (("layout", "drop_bos"), "harvest.drop_bos"),
    (("layout", "contexts_per_shard"), "harvest.contexts_per_shard"),
    (("codec", "dtype"), "store.dtype"),
    (("codec", "codec"), "store.codec"),
    (("codec", "contexts_per_chunk"), "store.contexts_per_chunk"),
)


def _get(attrs: dict, path: tuple[str, ...]):
    for key in path:
        attrs = attrs.get(key, {}) if isinstance(attrs, dict) else {}
    return attrs


def check_schema(attrs: dict, where: str) -> None:
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(f"{where}: store schema version {version!r} is not the supported {SCHEMA_VERSION}")


def check_reusable(existing: dict, wanted: dict, where: str) -> None:
    """Refuses, naming the first differing field, a store made by another configuration."""
    check_schema(existing, where)
    for path, field in _MUST_MATCH:
        have, want = _get(existing, path), _get(wanted, path)
        if have != want:
            raise ConfigError(f"{field}: the store at {where} was written with {have!r}, this run asks for {want!r}")
    have_rows, want_rows = existing["layout"]["n_contexts"], wanted["layout"]["n_contexts"]
    if want_rows > have_rows:
        raise ConfigError(
            f"harvest.n_tokens: the store at {where} was sized for {have_rows} contexts and cannot grow "
            f"to {want_rows}; use a new out_dir"
        )


def harvest_command(attrs: dict, out_dir) -> str:
    """The `pipeline harvest` command that resumes or repairs the store of `attrs` in `out_dir`: every setting the
    store must match (see `check_reusable`) that is not the default, and its size where the default is larger."""
    defaults = PipelineConfig()
    overrides = [f"out_dir={out_dir}"]
    for path, field in _MUST_MATCH:
        group, name = field.split(".")
        value = _get(attrs, path)
        if value != getattr(getattr(defaults, group), name):
            overrides.append(f"{field}={_hydra_value(value)}")
    n_rows = attrs["layout"]["n_contexts"] * attrs["layout"]["rows_per_context"]
    if n_rows < defaults.harvest.n_tokens:
        overrides.append(f"harvest.n_tokens={n_rows}")
    return "pipeline harvest " + " ".join(shlex.quote(o) for o in overrides)


def _hydra_value(value) -> str:
    """`value` as a Hydra override writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[\w./:@+-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def check_trainable(attrs: dict, model_name: str, hook: str, where: str) -> None:
    """Refuses to train on a store from another model, or without the hook asked for."""
    check_schema(attrs, where)
    if attrs["model"]["name"] != model_name:
        raise ConfigError(
            f"model.name: the store at {where} holds activations of {attrs['model']['name']!r}, not {model_name!r}"
        )
    if hook not in attrs["hooks"]:
        raise ConfigError(f"train.hook: the store at {where} has hooks {attrs['hooks']}, not {hook!r}")


def training_rows(n_rows: int, eval_tokens: int) -> int:
    """The rows of a store of `n_rows` left to train on once its last `eval_tokens` are held out, or ConfigError."""
    if not 0 < eval_tokens < n_rows:
        raise ConfigError(
            f"train.eval_tokens: expected between 1 and {n_rows - 1} (the store's rows), got {eval_tokens}"
        )
    return n_rows - eval_tokens


def base_attrs(model: dict, dataset: dict, hooks: list[str], layout: dict, codec: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "pipeline_version": __version__,
        "model": model,
        "dataset": dataset,
        "hooks": list(hooks),
        "layout": layout,
        "codec": codec,
        "norm_stats": {},
        "complete": False,
    }
