"""Activations streamed from the store: random chunks mixed in a shuffle buffer, read ahead by a thread.

The whole training set is never in memory. The training rows are the whole Zarr chunks before the
eval rows (the last `eval_tokens` rows, read once as in `ActivationData`). Each epoch visits every
chunk once in a seeded random order; the buffer holds up to `shuffle_chunks` chunks' rows, each
batch takes seeded-random rows out of it (a row is used once per epoch) and chunks are appended as
rows are consumed.

Which rows make up each batch is decided by `ShufflePlan` from indices alone, never from data: the
sequence is a pure function of (seed, step), and a resumed run replays the index logic of its
epoch up to `start_step`, then reads only the chunks that still hold unused rows and those to come.
A background thread reads and decodes the chunks in the order the plan will ask for them, at most
`prefetch_chunks` ahead; each batch goes to the device in the stored dtype (`transfer`) and is
converted to float32 and scaled there.
"""

import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.activations.arrays import array_means, open_arrays, scale_columns, side_by_side, store_source
from pipeline.activations.transfer import batch_to_device
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import training_rows
from pipeline.store.verify import read_checked, stored_checked

THREAD_NAME = "pipeline-prefetch"
_DONE = object()  # the reader's last item


@dataclass
class Step:
    """One batch of the plan, as operations on the buffer (an array of rows, `size` of them in use)."""

    chunks: list[int]  # chunks appended, in order, at buffer positions `at`, `at + chunk_rows`, ...
    at: int
    take: np.ndarray  # buffer positions of the batch's rows, in batch order
    rows: np.ndarray  # their training-row indices
    holes: np.ndarray  # after taking: buffer[holes] = buffer[fill] keeps the unused rows in front
    fill: np.ndarray


class ShufflePlan:
    """The row indices of every batch, from (seed, step) alone.

    Epoch e draws its chunk order and its row choices from generators seeded by (seed, e), and
    starts with an empty buffer, so an epoch never depends on the one before: resuming replays at
    most one epoch's index logic. Before each batch, chunks are appended while one more fits under
    the capacity or fewer than `batch_size` rows are held; before the epoch's last batch every
    remaining chunk is appended, so each epoch reads every chunk exactly once. The epoch has
    `n_chunks * chunk_rows // batch_size` batches; the rows left over at its end are dropped.
    """

    def __init__(self, n_chunks: int, chunk_rows: int, buffer_chunks: int, batch_size: int, seed: int):
        self.n_chunks, self.chunk_rows, self.batch_size = n_chunks, chunk_rows, batch_size
        self.per_epoch = n_chunks * chunk_rows // batch_size
        if self.per_epoch == 0:
            raise ConfigError(f"train.batch_size: {batch_size} exceeds the {n_chunks * chunk_rows} training rows")
        self.capacity = max(1, min(buffer_chunks, n_chunks)) * chunk_rows
        self.seed = seed % (1 << 64)
        self.pool = np.empty(max(self.capacity, 2 * batch_size + chunk_rows), dtype=np.int64)
        self._start_epoch(0)

    def max_rows(self) -> int:
        """The most rows the buffer ever holds."""
        return len(self.pool)

    def chunk_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.n_chunks)

    def seek(self, step: int) -> None:
        """Puts the plan where it is just before `step`, replaying that step's epoch from its start."""
        epoch, index = divmod(step, self.per_epoch)
        self._start_epoch(epoch)
        for _ in range(index):
            self.next()

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.size = epoch, 0
        self.order, self.next_chunk = self.chunk_order(epoch), 0
        self.rng = np.random.default_rng([self.seed, epoch, 1])
        self.step = epoch * self.per_epoch

    def held_rows(self) -> np.ndarray:
        """The training rows in the buffer now, in buffer order."""
        return self.pool[: self.size].copy()

    def chunks_to_read(self, last_step: int) -> Iterator[int]:
        """Chunks in the order `next` appends them until `last_step`, preceded by those with rows in the buffer.

        Taken from the plan's state now: the reader thread iterates it while the plan moves on.
        """
        now = np.unique(self.pool[: self.size] // self.chunk_rows).tolist() + self.order[self.next_chunk :].tolist()
        later = range(self.epoch + 1, last_step // self.per_epoch + 1)
        return itertools.chain(now, (chunk for epoch in later for chunk in self.chunk_order(epoch).tolist()))

    def next(self) -> Step:
        if self.step == (self.epoch + 1) * self.per_epoch:
            self._start_epoch(self.epoch + 1)
        b, r = self.batch_size, self.chunk_rows
        last = self.step == (self.epoch + 1) * self.per_epoch - 1
        chunks, at = [], self.size
        while self.next_chunk < self.n_chunks and (last or self.size < b or self.size + r <= self.capacity):
            chunk = int(self.order[self.next_chunk])
            self.pool[self.size : self.size + r] = np.arange(chunk * r, (chunk + 1) * r)
            self.size += r
            self.next_chunk += 1
            chunks.append(chunk)
        take = self.rng.choice(self.size, b, replace=False)
        rows = self.pool[take]
        # Remove the taken rows: the unused rows among the last b positions move into the holes below.
        keep = self.size - b
        taken_in_tail = np.zeros(b, dtype=bool)
        taken_in_tail[take[take >= keep] - keep] = True
        holes, fill = take[take < keep], keep + np.flatnonzero(~taken_in_tail)
        self.pool[holes] = self.pool[fill]
        self.size = keep
        self.step += 1
        return Step(chunks, at, take, rows, holes, fill)


class StreamingActivationData:
    """The interface of `ActivationData`, reading the training rows chunk by chunk as they are needed."""

    order = "shuffle-buffer"  # batches drawn from a buffer of seeded-random chunks: another order than in memory

    def __init__(self, store: ActivationStore, hook: str, cfg: TrainConfig, device: torch.device):
        n_rows = store.layout.n_rows
        n_train = training_rows(n_rows, cfg.eval_tokens)
        self.arrays, self.d, self.scales = open_arrays(store, hook, cfg)
        self.means = array_means(store, self.arrays)
        self.chunk_rows = store.group[f"acts/{self.arrays[0]}"].chunks[0]
        self.n_chunks = n_train // self.chunk_rows
        if self.n_chunks == 0:
            raise ConfigError(
                f"train.eval_tokens: {cfg.eval_tokens} of the store's {n_rows} rows leave no whole chunk "
                f"of {self.chunk_rows} rows to train on"
            )
        self.column_scales = [self.scales[name] for name in self.arrays]
        eval_rows = side_by_side([read_checked(store, name, n_train, n_rows) for name in self.arrays])
        self.eval = scale_columns(eval_rows.to(device=device, dtype=torch.float32), self.column_scales)
        # The first array is the input of an SAE or transcoder: `hook` and `scale` name it.
        self.store, self.hook, self.scale, self.device = store, self.arrays[0], self.column_scales[0], device
        self.shuffle_chunks, self.prefetch_chunks = cfg.shuffle_chunks, cfg.prefetch_chunks
        self.source = store_source(store)  # what the rows were harvested from, recorded beside each trained coder

    @property
    def n_train(self) -> int:
        return self.n_chunks * self.chunk_rows

    def plan(self, batch_size: int, seed: int) -> ShufflePlan:
        return ShufflePlan(self.n_chunks, self.chunk_rows, self.shuffle_chunks, batch_size, seed)

    def batch_rows(self, batch_size: int, n_steps: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
        """The training-row indices of the batches `batches` yields, computed without reading anything."""
        plan = self.plan(batch_size, seed)
        plan.seek(start_step)
        for _ in range(start_step, n_steps):
            yield plan.next().rows

    def batches(self, batch_size: int, n_steps: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """`n_steps` batches, from `start_step` on; the same seed gives the same rows in the same order."""
        plan = self.plan(batch_size, seed)
        if start_step >= n_steps:
            return
        plan.seek(start_step)
        held = plan.held_rows()
        reader = _Reader(
            self.store, self.arrays, self.chunk_rows, plan.chunks_to_read(n_steps - 1), self.prefetch_chunks
        )
        try:
            buffer = None
            if len(held):  # a resumed run: the unused rows of the chunks already begun, from their chunks
                chunk_of = held // self.chunk_rows
                for chunk in np.unique(chunk_of).tolist():
                    rows = reader.get(chunk)
                    if buffer is None:
                        buffer = torch.empty((plan.max_rows(), rows.shape[1]), dtype=rows.dtype)
                    where = np.flatnonzero(chunk_of == chunk)
                    buffer[torch.from_numpy(where)] = rows[torch.from_numpy(held[where] % self.chunk_rows)]
            for _ in range(start_step, n_steps):
                step = plan.next()
                for i, chunk in enumerate(step.chunks):
                    rows = reader.get(chunk)
                    if buffer is None:
                        buffer = torch.empty((plan.max_rows(), rows.shape[1]), dtype=rows.dtype)
                    start = step.at + i * self.chunk_rows
                    buffer[start : start + self.chunk_rows] = rows
                x = batch_to_device(buffer, torch.from_numpy(step.take), self.device)
                buffer[torch.from_numpy(step.holes)] = buffer[torch.from_numpy(step.fill)]
                yield scale_columns(x, self.column_scales)
        finally:
            reader.close()

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.eval), batch_size):
            yield self.eval[i : i + batch_size]


class _Reader:
    """A daemon thread reading chunks (every array's rows side by side) in a given order into a bounded queue."""

    def __init__(
        self, store: ActivationStore, arrays: tuple[str, ...], chunk_rows: int, chunks: Iterator[int], ahead: int
    ):
        self.queue: queue.Queue = queue.Queue(maxsize=ahead)
        self.stop = threading.Event()
        # The thread holds only what it reads with, so a dropped generator can still be collected.
        self.thread = threading.Thread(
            target=_read_chunks, args=(store, arrays, chunk_rows, chunks, self.queue, self.stop),
            name=f"{THREAD_NAME}-{arrays[0]}", daemon=True,
        )  # fmt: skip
        self.thread.start()

    def get(self, chunk: int) -> torch.Tensor:
        item = self.queue.get()
        if isinstance(item, ConfigError):  # a corrupt shard: its one line names it and the repair
            raise item
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading chunk {chunk} of the activation store failed: {item}") from item
        if item is _DONE:
            raise RuntimeError(f"the store reader ended before chunk {chunk}")
        got, rows = item
        if got != chunk:  # the reader follows the plan's order; anything else is a bug
            raise RuntimeError(f"the store reader sent chunk {got}, expected {chunk}")
        return rows

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:  # unblock a reader waiting on a full queue
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(timeout=0.05)


def _read_chunks(store, arrays, chunk_rows, chunks, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for chunk in chunks:
            if stop.is_set():
                return
            start, stop_row = chunk * chunk_rows, (chunk + 1) * chunk_rows
            stored = [stored_checked(store, name, start, stop_row) for name in arrays]
            # Joined by numpy: a torch copy would leave this thread OpenMP threads of its own, which slow every
            # parallel operation of the training thread on a machine of few cores while it lives (store.stats).
            rows = codecs.decode(stored[0] if len(stored) == 1 else np.concatenate(stored, axis=1), store.dtype)
            if not put((chunk, rows)):
                return
        put(_DONE)
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
        put(err)
