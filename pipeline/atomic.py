"""Writing a file (or creating a folder) so that readers see the old one or the whole new one, never a part."""

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

_PIECE = 1 << 20  # bytes written between two requests to start writing back to disk
_FLUSHERS = ThreadPoolExecutor(thread_name_prefix="flush")  # kept: a thread's start costs a tenth of a small write


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename.

    The data is flushed to disk before the rename, so even a crash of the machine leaves the old
    file or the new one. The temporary name is unique to this process and thread.
    """

    def write_flushed(tmp: Path) -> None:
        write(tmp)
        flush_to_disk(tmp)

    _replace(Path(path), write_flushed)


def write_bytes_atomic(path: Path, data: memoryview, verify: Callable[[Path], None]) -> None:
    """`data` replaces the file at `path` as `write_atomic` does, once `verify(tmp)` has read it back without error.

    The pieces of `data` go to disk as soon as each is written, and `verify` reads the file while the last
    ones are flushed: the write is on disk about when it would otherwise only be in the page cache.
    """

    def write_flushed(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for start in range(0, len(data), _PIECE):
                f.write(data[start : start + _PIECE])
                f.flush()
                _start_writeback(f.fileno(), start, _PIECE)
        flushed = _FLUSHERS.submit(flush_to_disk, tmp)
        try:
            verify(tmp)
        finally:
            flushed.result()

    _replace(Path(path), write_flushed)


@contextmanager
def text_replacing_after(path: Path, text: Callable[[], str]) -> Iterator[None]:
    """`text()` replaces the file at `path` as `write_text_atomic` does, once the block has ended without error.

    `text()` is called, and its file written and flushed to disk, on another thread while the block runs,
    so a record that may only appear after the data it describes costs no more than its rename after it.
    """
    path = Path(path)
    tmp = _temporary(path)
    staged = _FLUSHERS.submit(_write_flushed_text, tmp, text)
    try:
        yield
        staged.result()
        os.replace(tmp, path)
    finally:
        wait([staged])  # a block that failed must not leave the file to appear after its removal
        tmp.unlink(missing_ok=True)


def _write_flushed_text(tmp: Path, text: Callable[[], str]) -> None:
    tmp.write_text(text())
    flush_to_disk(tmp)


def _replace(path: Path, write_flushed: Callable[[Path], None]) -> None:
    tmp = _temporary(path)
    try:
        write_flushed(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary(path: Path) -> Path:
    """A name beside `path` for a file being written, unique to this process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to write these bytes to disk now, without waiting for it (a no-op where it cannot).

    On Linux, POSIX_FADV_DONTNEED starts the writeback of the range's dirty pages and drops its clean
    ones from the page cache, so a read that follows may come from the disk itself.
    """
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


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
    tmp = _temporary(path)
    try:
        fill(tmp)
        for item in sorted(tmp.rglob("*"), reverse=True):  # each file, then the folders holding them
            flush_to_disk(item)
        flush_to_disk(tmp)
        os.replace(tmp, path)
        flush_to_disk(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def flush_to_disk(path: Path) -> None:
    """Returns once the file's (or folder's) data and metadata are on disk, not only in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
