"""Text sources: each yields documents in an order fixed by (source, split, seed).

`stdlib` is the embedded default: the docstrings of Python's standard library and the pydoc
topics, so a quickstart needs no network. `files` reads local text, JSON lines or Parquet;
`hf` streams a Hugging Face data set.
"""

import ast
import random
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import ConfigError, first_line, quiet_logger

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


def check_source(cfg: DataConfig, hub_answers: Callable[[], bool]) -> None:
    """ConfigError, before any work, unless the data can be read: each of `data.paths` exists and parses with
    its `data.text_field` (files), or the hub answers (`hub_answers()`, asked only then) and knows the data set,
    its subset and split (hf)."""
    if cfg.source == "files":
        _file_documents(cfg)
    elif cfg.source == "hf":
        _check_hub_dataset(cfg, hub_answers)


def _check_hub_dataset(cfg: DataConfig, hub_answers: Callable[[], bool]) -> None:
    import datasets

    if not hub_answers():  # datasets would retry for half a minute; a streamed data set needs the hub anyway
        raise ConfigError(f"data.name: {cfg.name!r} streams from the Hugging Face hub, which does not answer")
    try:
        with quiet_logger("datasets"), quiet_logger("huggingface_hub"):
            splits = datasets.load_dataset_builder(cfg.name, cfg.subset or None).info.splits
    except Exception as err:  # noqa: BLE001 - an unknown name or subset, or a failing hub, fail in many ways
        raise ConfigError(
            f"data.name: {cfg.name!r} (data.subset {cfg.subset!r}) does not load ({first_line(err)})"
        ) from err
    if splits and cfg.split not in splits:
        raise ConfigError(f"data.split: {cfg.name} has splits {', '.join(splits)}, got {cfg.split!r}")


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

    datasets.disable_progress_bars()  # the harvest prints its own progress
    try:
        with quiet_logger("datasets"):  # its log line of a parse error would be a second line
            table = datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as err:  # noqa: BLE001 - a file that does not parse fails in many ways (Arrow, JSON, decoding)
        raise ConfigError(f"data.paths: {path} cannot be read as {builder} ({first_line(err)})") from err
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
