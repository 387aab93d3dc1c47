"""Values written as the text of Hydra overrides (`key=value`), which Hydra parses back to the same values.

Hydra's launchers compose each job's configuration from `conf/` and a list of overrides, on whichever
machine runs the job: the sweep's job folder and launcher settings, and what each job is told.
"""

import re
from typing import Any


def quote(text: str) -> str:
    """A Hydra quoted string: quotes are escaped, and so are the backslashes just before a quote or the end."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def format_value(value: Any) -> str:
    """`value` as Hydra reads it back: null, a number, a list of values, or else a quoted string."""
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return quote(str(value))
