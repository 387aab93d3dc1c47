"""Harvest benchmark: bare forward pass, raw store writes, and the two together, for one model and batch.

    python -m pipeline.bench.harvest [key=value ...]   (the same overrides as `pipeline harvest`)

All three run in this process on the configured model, hooks, batch and store settings, on
contexts of random token ids (throughput does not depend on the text); `model.name=random:gpt2`
is GPT-2 small with random weights. The bare forward pass keeps its activations on the device;
harvest copies them to the host and writes them with a worker's two shards in flight, as a
harvest actor does. Harvest should approach the slower of the other two.
"""

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.coders.registry import register_schema
from pipeline.config import compose
from pipeline.harvest.stage import planned_attrs
from pipeline.harvest.worker import CONCURRENT, HarvestWorker
from pipeline.models.hooks import parse_hook, run_to_hooks
from pipeline.models.loading import describe, load_config
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore

SHARDS = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str]) -> None:
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
        forward_s = _time_forward(worker, tokens)
        write_s, n_bytes = _time_writes(store, info.d_model)
        with ThreadPoolExecutor(CONCURRENT) as pool:
            list(pool.map(worker.harvest, range(CONCURRENT)))  # warm-up
            start = time.perf_counter()
            list(pool.map(worker.harvest, range(SHARDS)))
            harvest_s = time.perf_counter() - start
    print(
        f"model {cfg.model.name} ({cfg.model.dtype}, {worker.device}), hooks {list(cfg.harvest.hooks)}, "
        f"batch {cfg.harvest.batch_contexts} x {cfg.data.context_len} tokens, store {cfg.store.dtype}/{cfg.store.codec}"
    )
    print(f"bare forward   {rows / forward_s:>12,.0f} tokens/s")
    print(
        f"store write    {rows / write_s:>12,.0f} tokens/s  ({n_bytes / write_s / 1e9:.2f} GB/s, with read-back check)"
    )
    print(
        f"harvest        {rows / harvest_s:>12,.0f} tokens/s  "
        f"({rows / harvest_s / min(rows / forward_s, rows / write_s):.2f} x the slower)"
    )


def _time_forward(worker: HarvestWorker, tokens: np.ndarray) -> float:
    ids = torch.from_numpy(tokens).long()
    points = [parse_hook(p.name, worker.n_layers) for p in worker.points]
    for batch in ids[: worker.batch_contexts].split(worker.batch_contexts):  # warm-up
        run_to_hooks(worker.model, batch.to(worker.device), points, worker.n_layers)
    _sync(worker.device)
    start = time.perf_counter()
    for batch in ids.split(worker.batch_contexts):
        run_to_hooks(worker.model, batch.to(worker.device), points, worker.n_layers)
    _sync(worker.device)
    return time.perf_counter() - start


def _time_writes(store: ActivationStore, d_model: int) -> tuple[float, int]:
    logical = codecs.DTYPES[store.dtype][1]
    acts = torch.randn(store.layout.rows_per_shard, d_model).to(logical)
    start = time.perf_counter()
    for shard in range(SHARDS):
        store.write_shard(shard, {hook: acts for hook in store.hooks})
    elapsed = time.perf_counter() - start
    return elapsed, SHARDS * len(store.hooks) * acts.numel() * acts.element_size()


if __name__ == "__main__":
    main(sys.argv[1:])
