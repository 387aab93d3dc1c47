"""Text sources: each yields documents in an order fixed by (source, split, seed).

`stdlib` is the embedded default: the docstrings of Python's standard library and the pydoc
topics, so a quickstart needs no network. `files` reads local text, JSON lines or Parquet;
`hf` streams a Hugging Face data set.
"""

import ast
import random
import sysconfig
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import ConfigError

_MIN_DOC_CHARS = 200  # shorter docstrings are mostly signatures, not prose
_SKIPPED_STDLIB_DIRS = {"site-packages", "idlelib", "lib2to3", "turtledemo", "test", "tests"}
_FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def documents(cfg: DataConfig) -> Iterator[str]:
    """The source's documents in their seeded order."""
    if cfg.source == "stdlib":
        return _stdlib_documents(cfg.split == "validation", cfg.seed)
    if cfg.source == "files":
        docs = _file_documents(cfg)
        random.Random(cfg.seed).shuffle(docs)
        return iter(docs)
    return _hf_documents(cfg)


def _stdlib_documents(want_validation: bool, seed: int) -> Iterator[str]:
    # The units (pydoc topics and source files) are shuffled and read lazily, so a small harvest
    # parses only the few files it needs. One document in 20 goes to validation, chosen by a hash
    # of its text so the split does not depend on the seed.
    for unit in _shuffled(_stdlib_units(), seed):
        for doc in _unit_documents(unit):
            if len(doc) >= _MIN_DOC_CHARS and (zlib.crc32(doc.encode()) % 20 == 0) == want_validation:
                yield doc


def _shuffled(items: list, seed: int) -> list:
    random.Random(seed).shuffle(items)
    return items


def _stdlib_units() -> list[str | Path]:
    import pydoc_data.topics

    root = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(root.glob("*.py")) + sorted(
        p for p in root.glob("*/*.py") if p.parent.name not in _SKIPPED_STDLIB_DIRS
    )
    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)] + sources


def _unit_documents(unit: str | Path) -> list[str]:
    return [unit] if isinstance(unit, str) else _docstrings(unit)


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are templates or other encodings; they hold no prose we need
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


def _file_documents(cfg: DataConfig) -> list[str]:
    docs: list[str] = []
    for name in cfg.paths:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"data.paths: {name} does not exist")
        docs.extend(_load_texts(_FILE_BUILDERS[path.suffix], str(path), cfg.text_field))
    return docs


def _load_texts(builder: str, path: str, text_field: str) -> list[str]:
    import datasets

    table = datasets.load_dataset(builder, data_files=path, split="train")
    field = "text" if builder == "text" else text_field
    if field not in table.column_names:
        raise ConfigError(f"data.text_field: {path} has no column {field!r} (columns: {table.column_names})")
    return [t for t in table[field] if t]


def _hf_documents(cfg: DataConfig) -> Iterator[str]:
    import datasets

    stream = datasets.load_dataset(cfg.name, cfg.subset or None, split=cfg.split, streaming=True)
    stream = stream.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer)
    for row in stream:
        if cfg.text_field not in row:
            raise ConfigError(f"data.text_field: {cfg.name} rows have no field {cfg.text_field!r}")
        if row[cfg.text_field]:
            yield row[cfg.text_field]
