"""Harvest benchmark: bare forward pass, store writes, plain Zarr writes, and harvest, for one model and batch.

    python -m pipeline.bench.harvest [key=value ...]   (the same overrides as `pipeline harvest`)

All run in this process on the configured model, hooks, batch and store settings, on contexts of
random token ids (throughput does not depend on the text); `model.name=random:gpt2` is GPT-2 small
with random weights. The bare forward pass keeps its activations on the device; the store write is
`ActivationStore.write_shard` (read-back check, checksums and record included) and the plain Zarr
write puts the same rows into an array of the same chunks, shards and codec with Zarr's defaults,
shard by shard in turn with the store's so that both see the same machine load, for a couple of
seconds, and the plain write is also given with its flush to disk (`os.sync` after each shard), which the
store's write includes and a plain write leaves to the page cache: where the disk is slower than memory,
that is the store's bound; harvest copies the activations to the host and writes them with a worker's two shards in
flight, as a harvest actor does, in turn with the bare forward pass over the same contexts. Harvest
should approach the slower of the forward pass and the plain write.
"""

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.coders.registry import register_schema
from pipeline.config import compose
from pipeline.errors import ConfigError
from pipeline.harvest.stage import planned_attrs
from pipeline.harvest.worker import CONCURRENT, HarvestWorker
from pipeline.models.hooks import parse_hook, run_to_hooks
from pipeline.models.loading import describe, load_config
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore

SHARDS = 8
WRITE_S = 2.0  # seconds of writes each side is timed for, at least ...
MAX_ROUNDS = 8  # ... unless it has written every shard this many times
HARVEST_ROUNDS = 3  # rounds of the bare forward pass and of the harvest, in turn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(argv: list[str]) -> dict:
    """Tokens/s (and GB/s of the writes) of the bare forward pass, the store's write, a plain Zarr write and harvest."""
    register_schema()
    cfg = compose(argv)
    info = describe(cfg.model)
    attrs = planned_attrs(cfg, info)
    attrs["layout"]["n_contexts"] = SHARDS * cfg.harvest.contexts_per_shard
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore.create(Path(tmp) / "bench.zarr", attrs, info.d_model)
        vocab = load_config(cfg.model).vocab_size
        tokens = np.random.default_rng(0).integers(
            0, vocab, (store.layout.n_contexts, cfg.data.context_len), dtype=np.int32
        )
        store.write_tokens(tokens)
        worker = HarvestWorker(
            str(store.path), cfg.model, info.n_layers, cfg.harvest.batch_contexts, cfg.harvest.drop_bos
        )
        rows = store.layout.rows_per_shard * SHARDS
        write_s, plain_s, flush_s, rounds = _time_writes(store, info.d_model, Path(tmp) / "plain.zarr")
        n_bytes = rounds * rows * len(store.hooks) * info.d_model * torch.finfo(codecs.DTYPES[store.dtype][1]).bits // 8
        forward_s, harvest_s = _time_harvest(worker, tokens)
    forward, harvested = HARVEST_ROUNDS * rows / forward_s, HARVEST_ROUNDS * rows / harvest_s
    plain, flushed = rounds * rows / plain_s, rounds * rows / (plain_s + flush_s)
    return {
        "model": cfg.model.name,
        "model_dtype": cfg.model.dtype,
        "device": str(worker.device),
        "hooks": list(cfg.harvest.hooks),
        "batch_tokens": cfg.harvest.batch_contexts * cfg.data.context_len,
        "store": f"{cfg.store.dtype}/{cfg.store.codec}",
        "tokens": rows,
        "forward_tokens_s": forward,
        "store_write_tokens_s": rounds * rows / write_s,
        "store_write_gb_s": n_bytes / write_s / 1e9,
        "plain_zarr_tokens_s": plain,
        "plain_zarr_gb_s": n_bytes / plain_s / 1e9,
        "plain_flushed_tokens_s": flushed,
        "plain_flushed_gb_s": n_bytes / (plain_s + flush_s) / 1e9,
        "harvest_tokens_s": harvested,
        "store_of_plain": plain_s / write_s,
        "store_of_flushed_plain": (plain_s + flush_s) / write_s,
        "harvest_of_slower": harvested / min(forward, plain),
        "harvest_of_slower_flushed": harvested / min(forward, flushed),
    }


def _time_harvest(worker: HarvestWorker, tokens: np.ndarray) -> tuple[float, float]:
    """Seconds of bare forward passes over every context and of harvests of every shard, HARVEST_ROUNDS of each
    in turn, after one of each untimed: the two then see the same machine load, which drifts on a shared host
    by more than a tenth between one measurement and the next."""
    forward_s = harvest_s = 0.0
    with ThreadPoolExecutor(CONCURRENT) as pool:
        _time_forward(worker, tokens[: worker.batch_contexts])
        list(pool.map(worker.harvest, range(CONCURRENT)))
        for _ in range(HARVEST_ROUNDS):
            forward_s += _time_forward(worker, tokens)
            start = time.perf_counter()
            list(pool.map(worker.harvest, range(SHARDS)))
            harvest_s += time.perf_counter() - start
    return forward_s, harvest_s


def _time_forward(worker: HarvestWorker, tokens: np.ndarray) -> float:
    ids = torch.from_numpy(tokens).long()
    points = [parse_hook(p.name, worker.n_layers) for p in worker.points]
    _sync(worker.device)
    start = time.perf_counter()
    for batch in ids.split(worker.batch_contexts):
        run_to_hooks(worker.model, batch.to(worker.device), points, worker.n_layers)
    _sync(worker.device)
    return time.perf_counter() - start


def _time_writes(store: ActivationStore, d_model: int, plain_path: Path) -> tuple[float, float, float, int]:
    """Seconds of store writes, of plain Zarr writes of the same rows and of their flushes to disk, shard by
    shard in turn; the rounds.

    One write of each comes first, untimed (the codec pipeline and the threads start); then all SHARDS
    shards are written, again, until each side has taken WRITE_S or done MAX_ROUNDS rounds: a round
    of small shards lasts a fraction of a second, which one stray disk flush would dominate.
    """
    import zarr

    logical = codecs.DTYPES[store.dtype][1]
    acts = torch.randn(store.layout.rows_per_shard, d_model).to(logical)
    array = store.group[f"acts/{store.hooks[0]}"]
    plain = zarr.create_array(
        str(plain_path),
        shape=array.shape,
        chunks=array.chunks,
        shards=array.shards,
        dtype=array.dtype,
        compressors=array.compressors,
        fill_value=array.fill_value,
    )

    def write_plain(shard: int) -> None:
        first, last = store.layout.rows(shard)
        for _ in store.hooks:
            plain[first:last] = codecs.encode(acts, store.dtype)

    store.write_shard(0, {hook: acts for hook in store.hooks})
    write_plain(0)
    os.sync()
    write_s = plain_s = flush_s = 0.0
    rounds = 0
    while rounds < MAX_ROUNDS and min(write_s, plain_s) < WRITE_S:
        for shard in range(SHARDS):
            start = time.perf_counter()
            store.write_shard(shard, {hook: acts for hook in store.hooks})
            write_s += time.perf_counter() - start
            start = time.perf_counter()
            write_plain(shard)
            written = time.perf_counter()
            os.sync()  # timed apart, so the store's next write does not pay for this one's writeback
            plain_s += written - start
            flush_s += time.perf_counter() - written
        rounds += 1
    return write_s, plain_s, flush_s, rounds


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    try:
        r = measure(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"model {r['model']} ({r['model_dtype']}, {r['device']}), hooks {r['hooks']}, "
        f"batch {r['batch_tokens']} tokens, store {r['store']}"
    )
    print(f"bare forward   {r['forward_tokens_s']:>12,.0f} tokens/s")
    print(
        f"store write    {r['store_write_tokens_s']:>12,.0f} tokens/s  ({r['store_write_gb_s']:.2f} GB/s, "
        f"with read-back check; {r['store_of_plain']:.2f} x the plain Zarr write, "
        f"{r['store_of_flushed_plain']:.2f} x it flushed to disk)"
    )
    print(
        f"plain Zarr     {r['plain_zarr_tokens_s']:>12,.0f} tokens/s  ({r['plain_zarr_gb_s']:.2f} GB/s; "
        f"{r['plain_flushed_gb_s']:.2f} GB/s with its flush to disk)"
    )
    print(
        f"harvest        {r['harvest_tokens_s']:>12,.0f} tokens/s  "
        f"({r['harvest_of_slower']:.2f} x the slower of the forward pass and the plain write, "
        f"{r['harvest_of_slower_flushed']:.2f} x it with the plain write flushed)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
