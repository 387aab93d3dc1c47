"""A harvest worker: one model replica that turns a shard's contexts into activations in the store.

Two `harvest` calls may run at once, in two threads (a Ray actor with `max_concurrency=CONCURRENT`):
the forward passes take turns under a lock while the other call writes its shard, so the model
never waits for the disk. On a GPU the activations are copied into pinned host memory without
waiting, and only the end of a shard's forward passes waits for the copies.
"""

import queue
import threading

import torch

from pipeline.config import ModelConfig
from pipeline.models.hooks import parse_hook, run_to_hooks
from pipeline.models.loading import load_model, pick_device
from pipeline.store.activation_store import ActivationStore

CONCURRENT = 2  # shards in flight per replica: one in its forward passes, one being written


class HarvestWorker:
    """Used directly for a single-process harvest, or as a Ray actor (`ray.remote(HarvestWorker)`)."""

    def __init__(self, store_path: str, model_cfg: ModelConfig, n_layers: int, batch_contexts: int, drop_bos: bool):
        self.store = ActivationStore(store_path)
        # Ray shows an actor only its own GPUs; with several, the model's layers are spread over them.
        split = pick_device(model_cfg.device).type == "cuda" and torch.cuda.device_count() > 1
        self.model = load_model(model_cfg, pick_device(model_cfg.device), split_across_gpus=split)
        self.device = self.model.get_input_embeddings().weight.device
        self.n_layers = n_layers
        self.points = [parse_hook(h, n_layers) for h in self.store.hooks]
        self.batch_contexts = batch_contexts
        self.drop_bos = drop_bos
        self.forward_lock = threading.Lock()
        self.buffers: queue.Queue = queue.Queue()
        for _ in range(CONCURRENT):
            self.buffers.put(self._host_buffers())

    def _host_buffers(self) -> dict[str, torch.Tensor]:
        """One shard's activations per hook, in page-locked memory on GPU hosts so copies need not wait."""
        dtype = self.model.get_input_embeddings().weight.dtype
        rows, pin = self.store.layout.rows_per_shard, self.device.type == "cuda"
        return {p.name: torch.empty(rows, self.store.d_model(p.name), dtype=dtype, pin_memory=pin) for p in self.points}

    def harvest(self, shard: int) -> dict:
        """Writes one shard of every hook and returns its completion record."""
        acts = self.buffers.get()
        try:
            with self.forward_lock:
                rows = self._forward(shard, acts)
            return self.store.write_shard(shard, {name: buffer[:rows] for name, buffer in acts.items()})
        finally:
            self.buffers.put(acts)

    def _forward(self, shard: int, acts: dict[str, torch.Tensor]) -> int:
        """Fills `acts` with the shard's activations; returns the rows filled (the last shard may be short)."""
        start, stop = self.store.layout.contexts(shard)
        tokens = torch.from_numpy(self.store.read_tokens(start, stop)).long()
        row = 0
        for i in range(0, len(tokens), self.batch_contexts):
            captured = run_to_hooks(
                self.model, tokens[i : i + self.batch_contexts].to(self.device), self.points, self.n_layers
            )
            for name, batch in captured.items():
                batch = batch[:, 1:] if self.drop_bos else batch
                batch = batch.reshape(-1, batch.shape[-1])
                acts[name][row : row + len(batch)].copy_(batch, non_blocking=True)
            row += len(batch)
        if self.device.type == "cuda":
            for device in range(torch.cuda.device_count()):  # a model split over GPUs copies from each
                torch.cuda.synchronize(device)
        return row
