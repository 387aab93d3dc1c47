"""The activation store: a Zarr v3 group of `tokens` and `acts/<hook>` with per-shard completion records.

A shard is `contexts_per_shard` consecutive contexts: one Zarr shard of `tokens` and of every
`acts/<hook>` array. Each shard has exactly one writer, is written whole, and counts as complete
only once its record in `completion/` exists; the record is written after the data, atomically.
"""

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import create_dir_atomic, text_replacing_after, write_bytes_atomic, write_json_atomic
from pipeline.errors import ConfigError
from pipeline.store import codecs
from pipeline.store.schema import check_schema
from pipeline.store.stats import hook_stats, shard_sums

RECORDS = "completion"


@dataclass(frozen=True)
class Layout:
    n_contexts: int
    context_len: int
    rows_per_context: int  # context_len, less one when the BOS position is dropped
    contexts_per_shard: int

    @property
    def n_shards(self) -> int:
        return self.n_contexts // self.contexts_per_shard

    @property
    def n_rows(self) -> int:
        return self.n_contexts * self.rows_per_context

    @property
    def rows_per_shard(self) -> int:
        return self.contexts_per_shard * self.rows_per_context

    def contexts(self, shard: int) -> tuple[int, int]:
        return shard * self.contexts_per_shard, (shard + 1) * self.contexts_per_shard

    def rows(self, shard: int) -> tuple[int, int]:
        return shard * self.rows_per_shard, (shard + 1) * self.rows_per_shard


_BLOCK = 1 << 24  # bytes per separately hashed block: blocks hash in parallel threads
# The threads that hash and sum a shard while it is written; kept, since starting them costs a tenth of
# writing a small shard. Harvest threads write shards at once, each keeping two of them busy.
_HELPERS = ThreadPoolExecutor(thread_name_prefix="shard-sums")


def checksum(array: np.ndarray) -> str:
    """SHA-256 of the SHA-256 digests of the array's consecutive 16 MiB blocks.

    One SHA-256 stream runs at about 1 GB/s, slower than a GPU fills a shard; hashlib releases the
    GIL, so the blocks hash on several cores at once.
    """
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    blocks = [data[i : i + _BLOCK] for i in range(0, len(data), _BLOCK)]
    if len(blocks) == 1:  # starting threads would cost a fifth of hashing a small shard
        digests = [hashlib.sha256(blocks[0]).digest()]
    else:
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            digests = pool.map(lambda block: hashlib.sha256(block).digest(), blocks)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _file_holds(path: Path, expected: np.ndarray) -> bool:
    """Whether the file at `path` holds exactly the bytes of `expected`.

    Read and compared 1 MiB at a time into one buffer, which stays in the CPU's cache: a whole-file read
    and comparison would pass over three arrays of the file's size.
    """
    block = np.empty(min(1 << 20, expected.nbytes), np.uint8)
    with open(path, "rb") as f:
        for start in range(0, expected.nbytes, len(block)):
            n = f.readinto(block)
            if not np.array_equal(block[:n], expected[start : start + len(block)]):  # a short read differs in shape
                return False
        return f.read(1) == b""


class ActivationStore:
    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        self.attrs = dict(self.group.attrs)
        check_schema(self.attrs, str(self.path))
        layout = self.attrs["layout"]
        self.layout = Layout(
            layout["n_contexts"], layout["context_len"], layout["rows_per_context"], layout["contexts_per_shard"]
        )
        self.dtype = self.attrs["codec"]["dtype"]
        self.hooks: list[str] = self.attrs["hooks"]
        # Each array is opened once: opening one reads its metadata file, which every shard written would repeat.
        self.arrays = {name: self.group[name] for name in ["tokens", *(f"acts/{hook}" for hook in self.hooks)]}
        self._encoders = threading.local()

    @classmethod
    def create(cls, path: Path, attrs: dict, d_model: int) -> "ActivationStore":
        """Sizes every array once; the harvest then only fills shards.

        The group, its arrays, its attributes and `completion/` are made under a temporary name and renamed
        into place together, so a creation killed at any instant leaves no store at `path`. A folder there
        that is not a `created` store (what a killed creation of an earlier version left) is replaced.
        """
        path = Path(path)
        if path.exists() and not created(path):
            shutil.rmtree(path)
        create_dir_atomic(path, lambda tmp: _lay_out(tmp, attrs, d_model))
        return cls(path)

    def remove_leftovers(self) -> None:
        """Deletes the temporary files of writes killed midway (shards' and records' `.*.tmp`, Zarr's `*.partial`)."""
        for leftover in [*self.path.rglob(".*.tmp"), *self.path.rglob("*.partial")]:
            leftover.unlink(missing_ok=True)

    # -- tokens ------------------------------------------------------------------------------

    def tokens_complete(self) -> bool:
        return (self.path / RECORDS / "tokens.json").exists()

    def write_tokens(self, tokens: np.ndarray) -> None:
        self.group["tokens"][:] = tokens
        written = self.group["tokens"][:]
        if not np.array_equal(written, tokens):
            raise OSError(f"{self.path}/tokens: read-back differs from what was written")
        record = {"rows": [0, len(tokens)], "checksums": {"tokens": checksum(written)}, **_stamp()}
        write_json_atomic(self.path / RECORDS / "tokens.json", record)

    def read_tokens(self, start: int, stop: int) -> np.ndarray:
        return self.group["tokens"][start:stop]

    def tokens_files(self) -> list[Path]:
        """The files holding the tokens' data (one per shard that has any)."""
        return [p for p in (self.path / "tokens").rglob("*") if p.is_file() and p.name != "zarr.json"]

    # -- activation shards -------------------------------------------------------------------

    def write_shard(self, shard: int, acts: dict[str, torch.Tensor]) -> dict:
        """Writes one shard of every hook, verifies it by reading back, then records it complete.

        Each hook's checksum and sums are computed on other threads while its file goes to disk; the
        record goes to disk while the last hook's file does, and takes its name only after that file.
        """
        stamp, sums = _stamp(), {}
        *first, last = self.hooks
        for hook in first:
            self._write_checked(f"acts/{hook}", shard, self._encoded_file(shard, hook, acts[hook], sums))
        encoded = self._encoded_file(shard, last, acts[last], sums)
        # One line: json's indenting encoder is pure Python, twice as slow on a record's row sums as the compact one.
        with text_replacing_after(
            self.path / RECORDS / f"shard-{shard:06d}.json", lambda: json.dumps(self._record(shard, sums, stamp))
        ):
            self._write_checked(f"acts/{last}", shard, encoded)
        return self._record(shard, sums, stamp)

    def _encoded_file(self, shard: int, hook: str, acts: torch.Tensor, sums: dict) -> np.ndarray:
        """The bytes of `hook`'s file for shard `shard`; its checksum and sums start on other threads, into `sums`.

        They start once the file is encoded: on a CPU of few cores they would slow the encoding, and they
        are needed only once the file is on disk, which leaves the cores idle while it gets there.
        """
        start, stop = self.layout.rows(shard)
        data = codecs.encode(acts, self.dtype)
        if data.shape[0] != stop - start:
            raise ValueError(f"shard {shard} of {hook}: {data.shape[0]} rows, expected {stop - start}")
        encoded = self._encoder(f"acts/{hook}")(data).as_numpy_array()
        digest = _HELPERS.submit(checksum, data)
        stats = _HELPERS.submit(shard_sums, data, self.dtype)
        sums[hook] = digest, stats, encoded.nbytes  # the file's size: the read-back check compares every byte
        return encoded

    def _record(self, shard: int, sums: dict, stamp: dict) -> dict:
        """Shard `shard`'s completion record, once the checksums and sums of `sums` are done."""
        start, stop = self.layout.rows(shard)
        stats = {hook: stat.result() for hook, (_, stat, _) in sums.items()}
        return {
            "shard": shard,
            "contexts": list(self.layout.contexts(shard)),
            "rows": [start, stop],
            "checksums": {f"acts/{hook}": digest.result() for hook, (digest, _, _) in sums.items()},
            "bytes": {f"acts/{hook}": size for hook, (_, _, size) in sums.items()},
            "sum_sq_norm": {hook: sum_sq for hook, (sum_sq, _) in stats.items()},
            "sum": {hook: row_sums for hook, (_, row_sums) in stats.items()},
            **stamp,
        }

    def _write_checked(self, name: str, shard: int, encoded: np.ndarray) -> None:
        """Stores the shard file's bytes `encoded` as shard `shard` of array `name`: read back and compared byte for
        byte, then put on disk and renamed into place, so no record can outlive its data.

        The shard's file is encoded whole in memory and replaces the one on disk: Zarr would merge a slice write into
        the file already there, where a damaged one would fail it or survive in it; and the bytes to compare with are
        at hand without decoding the file again, which costs more than writing it.
        """
        file = self.shard_file(name, shard)
        target = f"{self.path}/{name}"

        def verify(tmp: Path) -> None:
            if not _file_holds(tmp, encoded):
                start, stop = self.layout.rows(shard)
                raise OSError(f"{target} rows {start}:{stop} read back differently")

        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(file, memoryview(encoded).cast("B"), verify)
        except OSError as err:
            raise OSError(f"shard {shard}: writing {target} failed: {err}") from err

    def _encoder(self, name: str) -> codecs.ShardEncoder:
        """This thread's encoder of array `name`'s shards (harvest threads write shards at once)."""
        encoders = self._encoders.__dict__.setdefault("by_name", {})
        if name not in encoders:
            encoders[name] = codecs.ShardEncoder(self.arrays[name], self.layout.rows_per_shard)
        return encoders[name]

    def tokens_record(self) -> dict | None:
        path = self.path / RECORDS / "tokens.json"
        return json.loads(path.read_text()) if path.exists() else None

    def record(self, shard: int) -> dict | None:
        path = self.path / RECORDS / f"shard-{shard:06d}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def complete_shards(self) -> list[int]:
        done = {int(p.stem.split("-")[1]) for p in (self.path / RECORDS).glob("shard-*.json")}
        return [k for k in range(self.layout.n_shards) if k in done]

    def incomplete_shards(self) -> list[int]:
        done = set(self.complete_shards())
        return [k for k in range(self.layout.n_shards) if k not in done]

    def shard_file(self, name: str, shard: int) -> Path:
        """The file holding shard `shard` of array `name`; absent until it is written (and, in a store written by an
        earlier version, for a shard of zeros alone, which Zarr left out)."""
        return self.path / name / self.arrays[name].metadata.encode_chunk_key((shard, 0))

    def file_bytes(self, name: str, shard: int) -> int:
        file = self.shard_file(name, shard)
        return file.stat().st_size if file.exists() else 0

    def discard(self, shards: list[int], tokens: bool = False) -> None:
        """Marks the store incomplete, then removes the completion records of `shards` (and of the tokens), which
        a harvest then writes again."""
        self.group.attrs["complete"] = False
        self.attrs = dict(self.group.attrs)
        for shard in shards:
            (self.path / RECORDS / f"shard-{shard:06d}.json").unlink(missing_ok=True)
        if tokens:
            (self.path / RECORDS / "tokens.json").unlink(missing_ok=True)

    def finalize(self) -> None:
        """Once every shard is complete: the normalisation statistics and the `complete` flag."""
        if self.incomplete_shards():
            raise RuntimeError(f"{self.path}: shards {self.incomplete_shards()[:5]} are not complete")
        records = [self.record(k) for k in range(self.layout.n_shards)]
        stats = {}
        for hook in self.hooks:
            total = sum(r["sum_sq_norm"][hook] for r in records)
            row_sum = np.sum([r["sum"][hook] for r in records], axis=0) if all("sum" in r for r in records) else None
            stats[hook] = hook_stats(total, row_sum, self.layout.n_rows)
        self.group.attrs.update({"norm_stats": stats, "complete": True})
        self.attrs = dict(self.group.attrs)

    # -- reading -------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def d_model(self, hook: str) -> int:
        return self.arrays[f"acts/{hook}"].shape[1]

    def read_rows(self, hook: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of one hook in the store's logical dtype."""
        return codecs.decode(self.arrays[f"acts/{hook}"][start:stop], self.dtype)


def _lay_out(path: Path, attrs: dict, d_model: int) -> None:
    """A new store's group, arrays, attributes and records folder at `path`."""
    import zarr

    layout, codec = attrs["layout"], attrs["codec"]
    cps, rpc = layout["contexts_per_shard"], layout["rows_per_context"]
    chunk_contexts = min(codec["contexts_per_chunk"], cps)  # dividing cps: the config checks it
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array(
        "tokens",
        shape=(layout["n_contexts"], layout["context_len"]),
        chunks=(cps, layout["context_len"]),
        dtype="int32",
        fill_value=0,
    )
    disk_dtype = codecs.DTYPES[codec["dtype"]][0]
    for hook in attrs["hooks"]:
        group.create_array(
            f"acts/{hook}",
            shape=(layout["n_contexts"] * rpc, d_model),
            chunks=(chunk_contexts * rpc, d_model),
            shards=(cps * rpc, d_model),
            dtype=disk_dtype,
            compressors=codecs.compressors(codec["codec"]),
            fill_value=0,
            attributes={"logical_dtype": codec["dtype"]},
        )
    group.attrs.update(attrs)
    (path / RECORDS).mkdir()


def _stamp() -> dict:
    return {
        "writer": f"{socket.gethostname()}:{os.getpid()}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def created(path: Path) -> bool:
    """Whether `path` holds a store whose creation finished: attributes naming its schema, and `completion/`.

    `ActivationStore.create` makes both appear at once; a folder without them holds no complete shard.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file() or not (path / RECORDS).is_dir():
        return False
    return "schema_version" in json.loads((path / "zarr.json").read_text()).get("attributes", {})


def open_store(path: Path, harvested: bool = True) -> ActivationStore:
    """An existing store (fully harvested, unless `harvested` is False), or ConfigError saying what is wrong."""
    if not created(path):
        raise ConfigError(f"out_dir: no activation store at {path}; run `pipeline harvest` first")
    store = ActivationStore(path)
    if harvested and not store.complete:
        raise ConfigError(f"out_dir: the store at {path} is not completely harvested; run `pipeline harvest` again")
    return store
