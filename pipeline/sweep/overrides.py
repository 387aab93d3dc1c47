"""A configuration written as Hydra overrides, so that a launched job composes the same configuration again.

Hydra's launchers build each job's configuration from `conf/` and a list of `key=value` overrides, on
whichever machine runs the job; these functions turn a configuration object back into that list.
"""

import re
from typing import Any

from omegaconf import OmegaConf


def quote(text: str) -> str:
    """A Hydra quoted string: quotes are escaped, and so are the backslashes just before a quote or the end."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return quote(str(value))


def leaves(node: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every field; lists are values, nested dicts are walked."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_overrides(cfg: Any, base: Any) -> list[str]:
    """`key=value` for every field of `cfg` whose value differs from `base` (configs or dataclasses)."""
    ours, theirs = (leaves(OmegaConf.to_container(OmegaConf.structured(c), resolve=True)) for c in (cfg, base))
    return [f"{k}={format_value(v)}" for k, v in ours.items() if k not in theirs or theirs[k] != v]
