"""A harvest worker: one model replica that turns a shard's contexts into activations in the store."""

import os

import torch

from pipeline.config import ModelConfig
from pipeline.models.hooks import parse_hook, run_to_hooks
from pipeline.models.loading import load_model, pick_device
from pipeline.store.activation_store import ActivationStore


class HarvestWorker:
    """Used directly for a single-process harvest, or as a Ray actor (`ray.remote(HarvestWorker)`)."""

    def __init__(
        self,
        store_path: str,
        model_cfg: ModelConfig,
        n_layers: int,
        batch_contexts: int,
        drop_bos: bool,
        fault_shard: int = -1,
    ):
        self.store = ActivationStore(store_path)
        # Ray shows an actor only its own GPUs; with several, the model's layers are spread over them.
        split = pick_device(model_cfg.device).type == "cuda" and torch.cuda.device_count() > 1
        self.model = load_model(model_cfg, pick_device(model_cfg.device), split_across_gpus=split)
        self.device = self.model.get_input_embeddings().weight.device
        self.n_layers = n_layers
        self.points = [parse_hook(h, n_layers) for h in self.store.hooks]
        self.batch_contexts = batch_contexts
        self.drop_bos = drop_bos
        self.fault_shard = fault_shard  # tests only: the process exits mid-way through this shard

    def harvest(self, shard: int) -> dict:
        start, stop = self.store.layout.contexts(shard)
        tokens = torch.from_numpy(self.store.read_tokens(start, stop)).long()
        parts: dict[str, list[torch.Tensor]] = {p.name: [] for p in self.points}
        for i in range(0, len(tokens), self.batch_contexts):
            if shard == self.fault_shard and i > 0:
                os._exit(17)
            captured = run_to_hooks(self.model, tokens[i : i + self.batch_contexts].to(self.device), self.points, self.n_layers)
            for name, acts in captured.items():
                acts = acts[:, 1:] if self.drop_bos else acts
                parts[name].append(acts.reshape(-1, acts.shape[-1]).cpu())
        return self.store.write_shard(shard, {name: torch.cat(chunks) for name, chunks in parts.items()})
