"""Writing a file (or creating a folder) so that readers see the old one or the whole new one, never a part."""

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename.

    The data is flushed to disk before the rename, so even a crash of the machine leaves the old
    file or the new one. The temporary name is unique to this process and thread.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


def create_dir_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` fills a temporary folder beside `path`, which then takes the name `path` in one rename.

    Readers see no folder at `path` or the whole new one. `path` must be absent (or an empty folder).
    A creation killed midway leaves only its temporary folder, which the next creation of `path`
    removes: one process creates `path` at a time. Files are flushed to disk before the rename.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fill(tmp)
        for item in sorted(tmp.rglob("*"), reverse=True):  # each file, then the folders holding them
            _fsync(item)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
