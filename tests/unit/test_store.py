import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from pipeline.atomic import text_replacing_after, write_atomic, write_bytes_atomic, write_json_atomic
from pipeline.errors import ConfigError
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore, checksum, open_store
from pipeline.store.schema import base_attrs, check_reusable, check_trainable, training_rows
from pipeline.store.stats import shard_sums
from pipeline.store.verify import data_damage


def _attrs(dtype="float16", codec="none", n_contexts=8, hooks=("resid_post.1",)):
    return base_attrs(
        model={"name": "m", "revision": "main", "dtype": "float32", "n_layers": 2, "d_model": 8, "has_lm_head": False},
        dataset={
            "source": "stdlib",
            "name": "x",
            "subset": "",
            "split": "train",
            "seed": 0,
            "context_len": 5,
            "paths": [],
        },
        hooks=list(hooks),
        layout={
            "n_contexts": n_contexts,
            "context_len": 5,
            "rows_per_context": 4,
            "contexts_per_shard": 4,
            "drop_bos": True,
        },
        codec={"dtype": dtype, "codec": codec, "contexts_per_chunk": 2},
    )


def _fill(store: ActivationStore, seed: int = 0) -> dict[int, torch.Tensor]:
    written = {}
    for shard in range(store.layout.n_shards):
        acts = torch.randn(store.layout.rows_per_shard, 8, generator=torch.Generator().manual_seed(seed + shard))
        store.write_shard(shard, {h: acts for h in store.hooks})
        written[shard] = acts
    return written


@pytest.mark.parametrize("codec", codecs.CODECS)
@pytest.mark.parametrize("dtype", list(codecs.DTYPES))
def test_round_trip_is_exact_in_the_logical_dtype(tmp_path, dtype, codec):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(dtype, codec), d_model=8)
    written = _fill(store)
    logical = codecs.DTYPES[dtype][1]
    for shard, acts in written.items():
        start, stop = store.layout.rows(shard)
        read = store.read_rows("resid_post.1", start, stop)
        assert read.dtype == logical
        assert torch.equal(read, acts.to(logical))


@pytest.mark.parametrize("codec", codecs.CODECS)
@pytest.mark.parametrize("dtype", list(codecs.DTYPES))
def test_shard_files_hold_the_bytes_of_a_plain_zarr_write_and_records_their_checksums(tmp_path, dtype, codec):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(dtype, codec), d_model=8)
    written = _fill(store)
    array = store.group["acts/resid_post.1"]
    plain = zarr.create_array(
        str(tmp_path / "plain.zarr"),
        shape=array.shape,
        chunks=array.chunks,
        shards=array.shards,
        dtype=array.dtype,
        compressors=array.compressors,
        fill_value=0,
    )
    for shard, acts in written.items():
        start, stop = store.layout.rows(shard)
        plain[start:stop] = codecs.encode(acts, dtype)
        key = array.metadata.encode_chunk_key((shard, 0))
        assert store.shard_file("acts/resid_post.1", shard).read_bytes() == (tmp_path / "plain.zarr" / key).read_bytes()
        assert store.record(shard)["checksums"]["acts/resid_post.1"] == checksum(array[start:stop])


def test_bfloat16_is_stored_as_uint16_bits_with_its_logical_dtype_named(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs("bfloat16"), d_model=8)
    array = store.group["acts/resid_post.1"]
    assert array.dtype == np.uint16
    assert array.attrs["logical_dtype"] == "bfloat16"


def test_shards_count_only_once_their_record_exists_and_records_hold_checksums(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(), d_model=8)
    assert store.incomplete_shards() == [0, 1]
    store.write_shard(1, {"resid_post.1": torch.ones(16, 8)})
    assert store.incomplete_shards() == [0]
    record = store.record(1)
    assert record["rows"] == [16, 32] and record["contexts"] == [4, 8]
    assert set(record["checksums"]) == {"acts/resid_post.1"}
    assert record["sum_sq_norm"]["resid_post.1"] == pytest.approx(16 * 8)
    with pytest.raises(RuntimeError, match="not complete"):
        store.finalize()


@pytest.mark.parametrize("parts", [1, 3])
@pytest.mark.parametrize("dtype", list(codecs.DTYPES))
def test_a_shards_sums_agree_with_float64_sums_of_its_rows_in_every_dtype(dtype, parts, monkeypatch):
    from pipeline.store import stats

    monkeypatch.setattr(stats, "_PARALLEL_BYTES", 0 if parts > 1 else stats._PARALLEL_BYTES)
    monkeypatch.setattr(stats.os, "cpu_count", lambda: parts)
    rows = (torch.randn(2500, 48) * 3 + 1).to(codecs.DTYPES[dtype][1])  # three chunks of rows, the last short
    exact = rows.double()
    sum_sq, row_sum = shard_sums(codecs.encode(rows, dtype), dtype)
    assert sum_sq == pytest.approx(exact.pow(2).sum().item(), rel=1e-6)
    np.testing.assert_allclose(row_sum, exact.sum(0).numpy(), rtol=1e-6, atol=1e-6 * exact.abs().sum(0).max().item())


def test_finalize_records_each_hooks_mean_and_mean_to_spread_ratio(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(dtype="float32"), d_model=8)
    for shard in range(store.layout.n_shards):
        acts = torch.randn(store.layout.rows_per_shard, 8, generator=torch.Generator().manual_seed(shard)) + 2.0
        store.write_shard(shard, {"resid_post.1": acts})
    store.finalize()
    rows = store.read_rows("resid_post.1", 0, store.layout.n_rows).double().numpy()
    stats = open_store(tmp_path / "s.zarr").attrs["norm_stats"]["resid_post.1"]
    assert stats["mean"] == pytest.approx(rows.mean(0).tolist(), rel=1e-6)  # each 1,024 rows are summed in float32
    spread = np.linalg.norm(rows.std(0))  # per-dimension standard deviations over every row
    assert stats["std_norm"] == pytest.approx(spread, rel=1e-6)  # squared norms are summed from float32 norms
    assert stats["mean_to_spread"] == pytest.approx(np.linalg.norm(rows.mean(0)) / spread, rel=1e-6)
    assert stats["mean_to_spread"] > 1.5  # a mean of 2 in 8 dimensions against unit spread: about 2


def test_finalize_records_mean_squared_norm_and_verify_catches_corruption(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(dtype="float32"), d_model=8)
    written = _fill(store)
    store.finalize()
    expected = torch.cat(list(written.values())).double().pow(2).sum(1).mean().item()
    assert open_store(tmp_path / "s.zarr").attrs["norm_stats"]["resid_post.1"]["mean_sq_norm"] == pytest.approx(
        expected
    )
    assert data_damage(store, 0) is None and data_damage(store, 1) is None
    store.group["acts/resid_post.1"][0:16] = np.zeros((16, 8), dtype=np.float32)
    assert data_damage(store, 0) == "acts/resid_post.1 differs from its checksum"
    assert data_damage(store, 1) is None


def test_a_failed_write_leaves_the_shard_unrecorded_and_names_it(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(), d_model=8)
    # A directory where the shard's file must go makes the write fail, for root too.
    (tmp_path / "s.zarr" / "acts" / "resid_post.1" / "c" / "0" / "0").mkdir(parents=True)
    with pytest.raises(OSError, match="shard 0: writing .*acts/resid_post.1"):
        store.write_shard(0, {"resid_post.1": torch.ones(16, 8)})
    assert store.incomplete_shards() == [0, 1]


def test_a_shard_whose_last_hooks_file_fails_leaves_no_record_nor_its_temporary_file(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(hooks=("resid_post.0", "resid_post.1")), d_model=8)
    (tmp_path / "s.zarr" / "acts" / "resid_post.1" / "c" / "0" / "0").mkdir(parents=True)
    with pytest.raises(OSError, match="shard 0: writing .*acts/resid_post.1"):
        store.write_shard(0, {"resid_post.0": torch.ones(16, 8), "resid_post.1": torch.ones(16, 8)})
    assert store.shard_file("acts/resid_post.0", 0).exists()  # the first hook's file was written ...
    assert store.incomplete_shards() == [0, 1]  # ... but the shard is not complete
    assert not list((tmp_path / "s.zarr" / "completion").iterdir())


def test_a_shards_record_gives_each_hooks_file_size_and_checksum(tmp_path):
    hooks = ("resid_post.0", "resid_post.1")
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(hooks=hooks, codec="zstd"), d_model=8)
    acts = {hook: torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i, hook in enumerate(hooks)}
    returned = store.write_shard(1, acts)
    assert returned == store.record(1)
    for hook in hooks:
        assert returned["bytes"][f"acts/{hook}"] == store.shard_file(f"acts/{hook}", 1).stat().st_size
        assert returned["checksums"][f"acts/{hook}"] == checksum(codecs.encode(acts[hook], "float16"))
    assert data_damage(store, 1) is None


def test_a_failed_record_write_leaves_no_record(tmp_path, monkeypatch):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(), d_model=8)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills while the record is flushed
    with pytest.raises(OSError, match="No space"):
        store.write_shard(0, {"resid_post.1": torch.ones(16, 8)})
    assert store.incomplete_shards() == [0, 1]
    assert not list((tmp_path / "s.zarr" / "completion").iterdir())  # nor a temporary file


def test_an_atomic_write_that_fails_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "f.json"
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}

    def half_then_fail(tmp):
        tmp.write_text('{"a": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, half_then_fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_text_replacing_after_its_block_appears_only_once_the_block_succeeds(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")
    with text_replacing_after(path, lambda: "new"):
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    with pytest.raises(OSError, match="data failed"), text_replacing_after(path, lambda: "newer"):
        raise OSError("data failed")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # the temporary file is gone too


def test_a_bytes_write_whose_read_back_fails_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "shard"
    path.write_bytes(b"old")
    new = np.arange(3 << 20, dtype=np.uint8)  # several pieces, each flushed on its own
    seen = []

    def differs(tmp):
        seen.append(np.fromfile(tmp, np.uint8))
        raise OSError("read back differently")

    with pytest.raises(OSError, match="read back differently"):
        write_bytes_atomic(path, memoryview(new), differs)
    assert np.array_equal(seen[0], new)  # what was checked is the whole new file
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["shard"]
    write_bytes_atomic(path, memoryview(new), lambda tmp: None)
    assert np.array_equal(np.fromfile(path, np.uint8), new)
    assert [p.name for p in tmp_path.iterdir()] == ["shard"]


def test_reuse_is_refused_for_another_model_hook_or_dtype_and_for_growth():
    have = _attrs()
    check_reusable(have, _attrs(n_contexts=4), "s")  # a smaller request reuses the bigger store
    for wanted, field in (
        (_attrs(hooks=("resid_post.0",)), "harvest.hooks"),
        (_attrs(dtype="float32"), "store.dtype"),
        (_attrs(n_contexts=12), "harvest.n_tokens"),
    ):
        with pytest.raises(ConfigError, match=field):
            check_reusable(have, wanted, "s")
    other_model = _attrs()
    other_model["model"]["name"] = "other"
    with pytest.raises(ConfigError, match="model.name"):
        check_reusable(have, other_model, "s")


def test_training_is_refused_on_a_store_of_another_model_or_hook():
    attrs = _attrs()
    check_trainable(attrs, "m", "resid_post.1", "s")
    with pytest.raises(ConfigError, match="model.name"):
        check_trainable(attrs, "gpt2", "resid_post.1", "s")
    with pytest.raises(ConfigError, match="train.hook"):
        check_trainable(attrs, "m", "mlp_out.0", "s")


def test_eval_tokens_hold_out_the_last_rows_and_must_leave_some_to_train_on():
    assert training_rows(100, 30) == 70
    for eval_tokens in (0, 100, -1):
        with pytest.raises(ConfigError, match=r"^train.eval_tokens: expected between 1 and 99"):
            training_rows(100, eval_tokens)


def test_a_store_of_an_unknown_schema_is_refused(tmp_path):
    store = ActivationStore.create(tmp_path / "s.zarr", _attrs(), d_model=8)
    store.group.attrs["schema_version"] = 99
    with pytest.raises(ConfigError, match="schema version 99"):
        ActivationStore(tmp_path / "s.zarr")


def test_the_read_back_check_finds_a_changed_missing_or_extra_byte(tmp_path):
    from pipeline.store.activation_store import _file_holds

    expected = np.random.default_rng(0).integers(0, 255, (3 << 20) + 5, dtype=np.uint8)
    path = tmp_path / "shard"
    changed = expected.copy()
    changed[(2 << 20) + 1] ^= 1
    for data, holds in ((expected, True), (changed, False), (expected[:-1], False), (np.append(expected, 0), False)):
        data.tofile(path)
        assert _file_holds(path, expected) is holds


# In a child process, with torch's two threads whatever the machine: counts the threads the OS runs that are not
# Python's, which are OpenMP's, before and after a store writes shards big enough for parallel operations.
OPENMP_THREADS = """
import os, sys, threading
from pathlib import Path
import torch
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import base_attrs

torch.set_num_threads(2)
torch.ones(1 << 22).sum()  # the main thread's own OpenMP threads start here
def openmp_threads():
    return len(os.listdir("/proc/self/task")) - threading.active_count()

before = openmp_threads()
layout = {"n_contexts": 8, "context_len": 513, "rows_per_context": 512, "contexts_per_shard": 4, "drop_bos": True}
attrs = base_attrs(
    model={"name": "m", "revision": "main", "dtype": "float32", "n_layers": 2, "d_model": 64, "has_lm_head": False},
    dataset={"source": "stdlib", "name": "x", "subset": "", "split": "train", "seed": 0, "context_len": 513,
             "paths": []},
    hooks=["resid_post.1"], layout=layout, codec={"dtype": "float16", "codec": "none", "contexts_per_chunk": 2},
)
store = ActivationStore.create(Path(sys.argv[1]) / "s.zarr", attrs, 64)
for shard in range(store.layout.n_shards):
    store.write_shard(shard, {"resid_post.1": torch.randn(store.layout.rows_per_shard, 64)})
print(before, openmp_threads())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_writing_shards_starts_no_openmp_threads_of_its_own(tmp_path):
    # A thread the store keeps that ran torch's parallel operations would keep OpenMP threads of its own: on a
    # machine of few cores they slow every parallel torch operation of the process after it (see store.stats).
    out = subprocess.run([sys.executable, "-c", OPENMP_THREADS, str(tmp_path)], capture_output=True, text=True)
    before, after = map(int, out.stdout.split())
    assert after == before
