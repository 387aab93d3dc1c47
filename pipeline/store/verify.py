"""Checking complete shards against their completion records: the size of each file and the SHA-256 of its data.

`harvest.verify` chooses how much a harvest checks before it leases shards (`pipeline verify` checks all):
- fast: the size of every complete shard's files, every byte of one shard drawn at random, and the
  tokens; a file missing, cut short or grown is found in any shard, a changed byte only in the drawn one.
- full: every byte of every complete shard, and the tokens.
- none: nothing.
Training checks every byte of each shard it reads, the first time this process reads it (`read_checked`), and
of the tokens before the splicer reads its contexts from them (`read_tokens_checked`).
"""

import random

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore, checksum
from pipeline.store.schema import harvest_command

# (file, size, mtime, checksum) of the shard files this process found intact: a file changed since is checked again
_INTACT: set[tuple] = set()


def size_damage(store: ActivationStore, shard: int, names=None) -> str | None:
    """Which file of complete shard `shard` (of `names`, default all) differs in size from its record; None when
    none does. Records written before sizes were recorded hold none."""
    sizes = store.record(shard).get("bytes", {})
    for name in [n for n in names or sizes if n in sizes]:
        have = store.file_bytes(name, shard)
        if have != sizes[name]:
            return f"{name} holds {have} bytes, its record {sizes[name]}"
    return None


def data_damage(store: ActivationStore, shard: int, names=None, rows: dict | None = None) -> str | None:
    """Which array of complete shard `shard` (of `names`, default every array its record covers) differs from
    its checksum; None when every byte matches. `rows` may hold arrays of the shard already read, as stored."""
    record = store.record(shard)
    for name in names or record["checksums"]:
        digest = checksum(rows[name]) if rows and name in rows else _digest(store, name, *record["rows"])
        if digest != record["checksums"][name]:
            return f"{name} {'cannot be read' if digest is None else 'differs from its checksum'}"
    return None


def tokens_damage(store: ActivationStore) -> str | None:
    """Whether the recorded tokens differ from their checksum; None when they match or are not yet complete."""
    record = store.tokens_record()
    if record is None or _digest(store, "tokens", 0, store.layout.n_contexts) == record["checksums"]["tokens"]:
        return None
    return "tokens differ from their checksum"


def _digest(store: ActivationStore, name: str, start: int, stop: int) -> str | None:
    """The checksum of rows [start, stop) of array `name` as stored; None when they cannot be decoded."""
    try:
        return checksum(store.group[name][start:stop])
    except Exception:  # noqa: BLE001 - a damaged file fails to decode in many ways
        return None


def corrupt_shards(store: ActivationStore, mode: str, progress=None) -> dict[int, str]:
    """The complete shards failing the `mode` check (fast or full, see the module), each with what is wrong."""
    complete = store.complete_shards()
    if not complete:
        return {}
    drawn = complete if mode == "full" else [random.choice(complete)]
    corrupt = {} if mode == "full" else {k: why for k in complete if (why := size_damage(store, k))}
    for shard in drawn:
        if shard not in corrupt and (why := size_damage(store, shard) or data_damage(store, shard)):
            corrupt[shard] = why
        if progress is not None:
            progress.update(1)
    return corrupt


def corrupt_error(store: ActivationStore, shard: int, why: str) -> ConfigError:
    return ConfigError(
        f"out_dir: shard {shard} of the store at {store.path} is corrupt ({why}); "
        f"repair it with: {harvest_command(store.attrs, store.path.parent)}"
    )


def read_tokens_checked(store: ActivationStore, start: int, stop: int) -> np.ndarray:
    """Contexts [start, stop) of the tokens, once all the tokens matched their record; ConfigError naming the
    command that repairs them. Checked in full the first time this process reads them, and again when one of
    their files changed since."""
    record = store.tokens_record()
    why = "they have no completion record" if record is None else None
    files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in store.tokens_files())
    key = (*files, record and record["checksums"]["tokens"])
    if why is None and key not in _INTACT:
        why = tokens_damage(store)
    if why:
        raise ConfigError(
            f"out_dir: the tokens of the store at {store.path} are corrupt ({why}); "
            f"repair them with: {harvest_command(store.attrs, store.path.parent)}"
        )
    _INTACT.add(key)
    return store.read_tokens(start, stop)


def read_checked(store: ActivationStore, hook: str, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of `hook` as `store.read_rows` gives them, once every shard they touch has
    matched its record; ConfigError naming the first corrupt shard and the command that repairs it.

    A shard is checked in full the first time this process reads any of its rows; rows that cover it
    whole are checked as read, without a second read.
    """
    return codecs.decode(stored_checked(store, hook, start, stop), store.dtype)


def stored_checked(store: ActivationStore, hook: str, start: int, stop: int) -> np.ndarray:
    """`read_checked`'s rows as the store holds them (bfloat16 as its uint16 bits), before they become a tensor."""
    name = f"acts/{hook}"
    stored = store.group[name][start:stop]
    per_shard = store.layout.rows_per_shard
    for shard in range(start // per_shard, (stop - 1) // per_shard + 1):
        first, last = store.layout.rows(shard)
        whole = {name: stored[first - start : last - start]} if first >= start and last <= stop else None
        _check_once(store, name, shard, whole)
    return stored


def _check_once(store: ActivationStore, name: str, shard: int, rows: dict | None) -> None:
    record = store.record(shard)
    if record is None:
        raise corrupt_error(store, shard, "it has no completion record")
    file = store.shard_file(name, shard)
    stat = file.stat() if file.exists() else None
    key = (str(file), stat and stat.st_size, stat and stat.st_mtime_ns, record["checksums"].get(name))
    if key in _INTACT:
        return
    why = size_damage(store, shard, [name]) or data_damage(store, shard, [name], rows)
    if why:
        raise corrupt_error(store, shard, why)
    _INTACT.add(key)
