import gc
import threading

import numpy as np
import pytest
import torch

from pipeline.activations import loading as data_module
from pipeline.activations.loading import ActivationData, open_activation_data
from pipeline.activations.stream import THREAD_NAME, ShufflePlan, StreamingActivationData
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError

HOOK = "resid_post.0"


CPU = torch.device("cpu")


def _stream(store, **train) -> StreamingActivationData:
    cfg = TrainConfig(**{"eval_tokens": 512, "shuffle_chunks": 2, "prefetch_chunks": 2, **train})
    return StreamingActivationData(store, HOOK, cfg, CPU)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_train_rows_are_the_whole_chunks_before_the_eval_rows(store):
    data = _stream(store)
    assert (data.chunk_rows, data.n_chunks, data.n_train, len(data.eval)) == (512, 7, 3584, 512)
    assert _stream(store, eval_tokens=500).n_train == 3584  # 12 rows belong to neither
    with pytest.raises(ConfigError, match="train.eval_tokens"):
        _stream(store, eval_tokens=3600)


@pytest.mark.parametrize("batch_size", [200, 700])  # smaller and larger than a chunk
def test_the_order_is_a_pure_function_of_the_seed_and_each_epoch_uses_a_row_once(store, batch_size):
    data = _stream(store)
    per_epoch = data.n_train // batch_size
    n_steps = 2 * per_epoch + 3
    a = list(data.batches(batch_size, n_steps, seed=1))
    b = list(data.batches(batch_size, n_steps, seed=1))
    c = list(data.batches(batch_size, n_steps, seed=2))
    assert len(a) == n_steps and all(x.shape == (batch_size, data.d) and x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])

    rows = list(data.batch_rows(batch_size, n_steps, seed=1))
    memory = ActivationData(store, HOOK, TrainConfig(eval_tokens=512), CPU)
    assert all(
        torch.equal(x, memory.train[torch.from_numpy(r)]) for x, r in zip(a, rows)
    )  # the rows named, scaled alike
    for epoch in range(2):
        seen = np.concatenate(rows[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert len(np.unique(seen)) == len(seen) == per_epoch * batch_size  # no row twice in an epoch
        assert seen.min() >= 0 and seen.max() < data.n_train  # training rows only, never eval rows
    assert not np.array_equal(rows[0], rows[per_epoch])  # each epoch is a fresh order


@pytest.mark.parametrize(
    "batch_size, start_step", [(200, 1), (200, 4), (200, 17), (200, 18), (200, 23), (700, 4), (700, 7)]
)
def test_a_resumed_run_sees_the_tail_of_the_whole_sequence(store, batch_size, start_step):
    data = _stream(store)
    whole = list(data.batches(batch_size, 30, seed=3))  # 17 batches of 200 per epoch, or 5 of 700
    resumed = list(data.batches(batch_size, 30, seed=3, start_step=start_step))
    assert len(resumed) == 30 - start_step
    assert all(torch.equal(x, y) for x, y in zip(whole[start_step:], resumed))
    assert list(data.batches(batch_size, 30, seed=3, start_step=30)) == []


def test_the_buffer_mixes_no_more_chunks_than_asked():
    plan = ShufflePlan(n_chunks=10, chunk_rows=100, buffer_chunks=3, batch_size=64, seed=0)
    plan.seek(0)
    appended = []
    for _ in range(plan.per_epoch):
        step = plan.next()
        appended += step.chunks
        assert plan.size + len(step.rows) <= 300  # at most 3 chunks' rows when the batch is drawn
        assert set((step.rows // 100).tolist()) <= set(appended)
    assert sorted(appended) == list(range(10))  # the epoch appended every chunk once


def test_eval_batches_equal_the_in_memory_ones(store):
    streamed = list(_stream(store).eval_batches(200))
    memory = list(ActivationData(store, HOOK, TrainConfig(eval_tokens=512), CPU).eval_batches(200))
    assert len(streamed) == len(memory) == 3 and all(torch.equal(x, y) for x, y in zip(streamed, memory))


def test_each_cache_mode_is_picked_and_a_bad_one_refused(store, monkeypatch):
    def opened(cache, **train):
        return open_activation_data(store, HOOK, TrainConfig(eval_tokens=512, cache=cache, **train), CPU)

    device, host, streamed = opened("device"), opened("host"), opened("none")
    assert type(device) is ActivationData and device.train.device == CPU
    assert type(host) is ActivationData and host.train.device == CPU and host.device == CPU
    assert isinstance(streamed, StreamingActivationData)
    assert type(opened("auto")) is ActivationData  # 256 KiB fit in any machine
    monkeypatch.setattr(data_module, "available_host_memory", lambda: 4096 * 16 * 4)  # twice the rows: too little
    assert isinstance(opened("auto"), StreamingActivationData)


def test_host_memory_batches_are_moved_to_the_device(store):
    meta = torch.device("meta")  # stands in for an accelerator: batches land there, rows stay on the host
    data = ActivationData(store, HOOK, TrainConfig(eval_tokens=512), meta, storage_device=CPU)
    assert data.train.device == CPU
    assert next(data.batches(256, 1, seed=0)).device == meta and next(data.eval_batches(256)).device == meta


def test_leaving_the_batches_early_stops_the_reader(store):
    data = _stream(store)
    assert not _prefetch_threads()
    for _ in zip(range(3), data.batches(200, 50, seed=0)):
        pass  # zip drops the generator after 3 batches
    assert not _prefetch_threads()
    batches = data.batches(200, 50, seed=0)
    for i, _ in enumerate(batches):
        if i == 2:
            break
    assert _prefetch_threads()  # the generator is still referenced, suspended: its reader waits
    del batches
    gc.collect()
    assert not _prefetch_threads()


PAIRED = {"eval_tokens": 256, "shuffle_chunks": 2, "prefetch_chunks": 2, "target_hook": "mlp_out.0"}


def test_an_input_and_its_target_stream_side_by_side_in_the_rows_of_the_in_memory_data(paired_store):
    streamed = StreamingActivationData(paired_store, "mlp_in.0", TrainConfig(**PAIRED), CPU)
    memory = ActivationData(paired_store, "mlp_in.0", TrainConfig(**PAIRED), CPU)
    assert streamed.arrays == memory.arrays == ("mlp_in.0", "mlp_out.0") and streamed.d == memory.d == 16
    everything = torch.cat([memory.train, memory.eval])
    for half in (everything[:, :16], everything[:, 16:]):  # each array scaled by its own statistics
        assert half.pow(2).sum(1).mean().item() == pytest.approx(16, rel=1e-4)
    assert memory.scales["mlp_out.0"] < memory.scales["mlp_in.0"] == memory.scale
    batches = list(streamed.batches(100, 40, seed=5))
    rows = list(streamed.batch_rows(100, 40, seed=5))
    assert all(
        x.shape == (100, 32) and torch.equal(x, memory.train[torch.from_numpy(r)]) for x, r in zip(batches, rows)
    )
    resumed = list(streamed.batches(100, 40, seed=5, start_step=23))
    assert all(torch.equal(x, y) for x, y in zip(batches[23:], resumed))
    assert all(torch.equal(x, y) for x, y in zip(streamed.eval_batches(100), memory.eval_batches(100)))
