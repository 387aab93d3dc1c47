"""The store's creation leaves a whole store or none, and its checksums are checked: by a re-harvest's check,
by `pipeline verify`'s and by training, on shards corrupted on disk from outside."""

import shlex

import numpy as np
import pytest
import torch

from pipeline.activations.loading import ActivationData
from pipeline.activations.stream import StreamingActivationData
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.store.activation_store import ActivationStore, created, open_store
from pipeline.store.schema import base_attrs, harvest_command
from pipeline.store.verify import corrupt_shards, data_damage, read_checked, tokens_damage

D = 8


def _attrs(n_contexts: int = 12) -> dict:
    return base_attrs(
        model={"name": "m", "revision": "main", "dtype": "float32", "n_layers": 2, "d_model": D, "has_lm_head": False},
        dataset={
            "source": "stdlib",
            "name": "python-stdlib-docs",
            "subset": "",
            "split": "train",
            "seed": 0,
            "context_len": 5,
            "paths": [],
        },
        hooks=["resid_post.1"],
        layout={
            "n_contexts": n_contexts,
            "context_len": 5,
            "rows_per_context": 4,
            "contexts_per_shard": 4,
            "drop_bos": True,
        },
        codec={"dtype": "float16", "codec": "none", "contexts_per_chunk": 2},
    )


def _harvested(path) -> ActivationStore:
    """A complete store of 3 shards of 16 rows, the same bytes for the same path."""
    store = ActivationStore.create(path, _attrs(), D)
    store.write_tokens(np.arange(12 * 5, dtype=np.int32).reshape(12, 5))
    for shard in range(store.layout.n_shards):
        rows = torch.randn(store.layout.rows_per_shard, D, generator=torch.Generator().manual_seed(shard))
        store.write_shard(shard, {"resid_post.1": rows})
    store.finalize()
    return store


def _flip(file, at: int = 40) -> None:
    """Inverts one byte of `file` in place, leaving its size as it was."""
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_folder_left_half_created_is_no_store_and_is_replaced_by_a_whole_one(tmp_path):
    import zarr

    fresh = ActivationStore.create(tmp_path / "fresh" / "store.zarr", _attrs(), D)
    # What a creation killed before its attributes left: a group holding some arrays, no attributes.
    path = tmp_path / "run" / "store.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3).create_array("tokens", shape=(12, 5), dtype="int32")
    # and the temporary folder of a creation killed before its rename
    leftover = path.with_name(".store.zarr.1.1.tmp")
    zarr.open_group(str(leftover), mode="w", zarr_format=3)
    assert not created(path)
    with pytest.raises(ConfigError, match=r"^out_dir: no activation store at .*; run `pipeline harvest` first$"):
        open_store(path)
    ActivationStore.create(path, _attrs(), D)
    assert created(path) and not leftover.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["store.zarr"]
    assert _files(path) == _files(fresh.path)


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    store = _harvested(tmp_path / "store.zarr")
    before = _files(store.path)
    (store.shard_file("acts/resid_post.1", 1).parent / "0.abc.partial").write_bytes(b"half")
    (store.shard_file("acts/resid_post.1", 1).parent / ".0.7.7.tmp").write_bytes(b"half")
    (store.path / "completion" / ".shard-000001.json.7.7.tmp").write_text("{")
    store.remove_leftovers()
    assert _files(store.path) == before


def test_full_finds_a_changed_byte_in_any_shard_and_fast_a_changed_size(tmp_path):
    store = _harvested(tmp_path / "store.zarr")
    assert corrupt_shards(store, "full") == {} and corrupt_shards(store, "fast") == {}
    assert tokens_damage(store) is None
    _flip(store.shard_file("acts/resid_post.1", 1))
    assert corrupt_shards(store, "full") == {1: "acts/resid_post.1 differs from its checksum"}
    file = store.shard_file("acts/resid_post.1", 2)
    file.write_bytes(file.read_bytes()[:-10])
    size = store.record(2)["bytes"]["acts/resid_post.1"]
    fast = corrupt_shards(store, "fast")
    assert fast[2] == f"acts/resid_post.1 holds {size - 10} bytes, its record {size}"
    assert set(fast) <= {1, 2}  # shard 1 too when it is the one drawn for a full check
    _flip(store.shard_file("tokens", 0), at=2)
    assert tokens_damage(store) == "tokens differ from their checksum"


def test_discarding_marks_the_store_incomplete_and_drops_the_records(tmp_path):
    store = _harvested(tmp_path / "store.zarr")
    store.discard([1], tokens=True)
    assert not ActivationStore(store.path).complete
    assert store.incomplete_shards() == [1] and not store.tokens_complete()


def test_the_repair_command_names_every_setting_that_is_not_the_default(tmp_path):
    attrs = _attrs()
    attrs["model"]["name"] = "/models/my model"
    command = harvest_command(attrs, tmp_path)
    assert shlex.split(command) == [
        "pipeline",
        "harvest",
        f"out_dir={tmp_path}",
        "model.name='/models/my model'",
        "data.context_len=5",
        "harvest.hooks=[resid_post.1]",
        "harvest.contexts_per_shard=4",
        "store.contexts_per_chunk=2",
        "harvest.n_tokens=48",
    ]


def test_reading_checks_each_shard_once_and_refuses_a_corrupt_one_in_one_line(tmp_path):
    store = _harvested(tmp_path / "store.zarr")
    assert torch.equal(read_checked(store, "resid_post.1", 0, 48), store.read_rows("resid_post.1", 0, 48))
    _flip(store.shard_file("acts/resid_post.1", 1))  # changed since it was checked: checked again
    with pytest.raises(ConfigError) as err:
        read_checked(store, "resid_post.1", 20, 24)  # four rows of shard 1 check it whole
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"out_dir: shard 1 of the store at {store.path} is corrupt (acts/resid_post.1 differs from its checksum); "
        f"repair it with: pipeline harvest out_dir={tmp_path} "
    )
    assert data_damage(store, 0) is None


def test_training_refuses_a_corrupt_store_before_it_starts_in_memory_and_when_its_shard_is_streamed(tmp_path):
    store = _harvested(tmp_path / "store.zarr")
    _flip(store.shard_file("acts/resid_post.1", 0))
    cfg = TrainConfig(eval_tokens=8)
    with pytest.raises(ConfigError, match=r"^out_dir: shard 0 of the store at .* is corrupt"):
        ActivationData(store, "resid_post.1", cfg, torch.device("cpu"))
    # Streamed, the eval rows (shard 2) are read at once; shard 0 only when a batch needs it.
    data = StreamingActivationData(
        store, "resid_post.1", TrainConfig(eval_tokens=8, shuffle_chunks=1), torch.device("cpu")
    )
    with pytest.raises(ConfigError, match=r"^out_dir: shard 0 of the store at .* is corrupt .*repair it with"):
        list(data.batches(4, 20, seed=0))
