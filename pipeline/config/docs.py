"""The documentation of config fields, read from the schema's source, and the listing `pipeline STAGE --help` prints.

A field's documentation is the comment beside its declaration in its dataclass (a declaration
wrapped over several lines keeps it on one of them), or, where that line would grow too long, the
comment lines right above the declaration: the schema is the only place the text lives. The
listing adds each field's current value and declared rules (`checks`).
"""

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

from pipeline.config.checks import describe


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its comment} for a dataclass, from its source; fields without a comment are left out."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments, alone = {}, set()  # line -> comment text; the lines holding only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if token.line.lstrip().startswith("#"):
                alone.add(token.start[0])
    docs = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = _comment_lines(node, comments, alone)
            if lines:
                docs[node.target.id] = " ".join(comments[n] for n in lines)
    return docs


def _comment_lines(node: ast.AST, comments: dict[int, str], alone: set[int]) -> list[int]:
    """The lines of the comment beside a declaration, else of the comment block right above it."""
    beside = [n for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    if beside:
        return beside
    above = node.lineno - 1
    while above in alone:
        above -= 1
    return list(range(above + 1, node.lineno))


def listing(cfg: Any, groups: tuple[str, ...]) -> str:
    """The fields of `cfg` named in `groups` (a group with all its fields), each as `name: value  # doc [rules]`."""
    rows = [row for f in dataclasses.fields(cfg) if f.name in groups for row in _rows(cfg, f, "")]
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}  # {doc}" if doc else left for left, doc in rows)


def _rows(owner: Any, f: dataclasses.Field, indent: str) -> list[tuple[str, str]]:
    """(`name: value`, its documentation) of field `f` of `owner`; a group's fields follow its own row, indented."""
    value = getattr(owner, f.name)
    if not dataclasses.is_dataclass(value):
        return [(f"{indent}{f.name}: {_format(value)}", _doc(type(owner), f))]
    rows = [(f"{indent}{f.name}:", _doc(type(owner), f))]
    for inner in dataclasses.fields(value):
        rows += _rows(value, inner, indent + "  ")
    return rows


def field_doc(cls: type, name: str) -> str:
    """The documentation of field `name` of dataclass `cls`, declared in it or in a base class."""
    declared = [c for c in cls.__mro__ if name in getattr(c, "__annotations__", {})]
    return next((doc for c in declared if (doc := field_docs(c).get(name))), "")


def _doc(cls: type, f: dataclasses.Field) -> str:
    rules = describe(f.metadata)
    # A field of a class assembled at run time (the coder node) carries its text from where it was declared.
    doc = f.metadata.get("doc") or field_doc(cls, f.name)
    return f"{doc} [{rules}]" if rules else doc


def _format(value: Any) -> str:
    """The value as an override would spell it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if value == "":
        return "''"
    return str(value)
