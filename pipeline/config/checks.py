"""Declared ranges and choices of config fields, and the one checker that holds every dataclass to them.

A field declares its rules with `checked(default, choices=..., min=..., gt=..., max=..., lt=...,
pattern=...)` (`pattern`: a regular expression the whole string matches); on a list field they hold
for each element. A dataclass adds rules that tie several fields together in a
`validate(self, at)` method (`at` is its dotted prefix, e.g. "train."), raising ConfigError.
`check(cfg)` checks every field (nested dataclasses too), then `validate`, and refuses the first value that fails.
"""

import dataclasses
import re
from typing import Any

from pipeline.errors import ConfigError

RULES = ("choices", "min", "gt", "max", "lt", "pattern")
_BOUND_WORDS = {"min": "at least", "gt": "more than", "max": "at most", "lt": "less than"}


def checked(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **rules: Any):
    """A dataclass field whose value `check` holds to `rules` (keywords of RULES)."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise TypeError(f"checked: unknown rule(s) {sorted(unknown)}; expected some of {', '.join(RULES)}")
    return dataclasses.field(default=default, default_factory=default_factory, metadata=rules)


def check(cfg: Any, at: str = "") -> None:
    """ConfigError naming the dotted field (under prefix `at`) of the first value that breaks its rules."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{at}{f.name}.")
        else:
            check_value(f"{at}{f.name}", value, f.metadata)
    if hasattr(cfg, "validate"):
        cfg.validate(at)


def check_value(name: str, value: Any, rules: dict) -> None:
    items = value if isinstance(value, list | tuple) else [value]
    if not all(_allowed(v, rules) for v in items):
        raise ConfigError(f"{name}: expected {describe(rules)}, got {value!r}")


def _allowed(v: Any, rules: dict) -> bool:
    # Each bound is written so that NaN breaks it.
    return (
        ("choices" not in rules or v in rules["choices"])
        and ("pattern" not in rules or re.fullmatch(rules["pattern"], str(v)) is not None)
        and ("min" not in rules or v >= rules["min"])
        and ("gt" not in rules or v > rules["gt"])
        and ("max" not in rules or v <= rules["max"])
        and ("lt" not in rules or v < rules["lt"])
    )


def describe(rules: dict) -> str:
    """The rules in words: 'one of a, b', 'at least 1 and less than 1', ''."""
    if "choices" in rules:
        return "one of " + ", ".join(map(str, rules["choices"]))
    if "pattern" in rules:
        return f"a match of {rules['pattern']}"
    return " and ".join(f"{_BOUND_WORDS[rule]} {rules[rule]}" for rule in _BOUND_WORDS if rule in rules)
