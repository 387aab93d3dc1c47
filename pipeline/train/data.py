"""Activations for training: one hook of the store, scaled to E||x||^2 = d, split into train and eval rows.

The store is read once and kept in memory; the batch order is a pure function of the seed, so
every arm of a sweep with the same seed sees the same rows in the same order.
"""

from collections.abc import Iterator

import torch

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.store.activation_store import ActivationStore


class ActivationData:
    def __init__(self, store: ActivationStore, hook: str, cfg: TrainConfig, device: torch.device):
        n_rows = store.layout.n_rows
        if not 0 < cfg.eval_tokens < n_rows:
            raise ConfigError(f"train.eval_tokens: expected between 1 and {n_rows - 1} (the store's rows), got {cfg.eval_tokens}")
        d = store.d_model(hook)
        # Anthropic's normalisation: one scalar per hook so that the mean squared norm equals d.
        self.scale = (d / store.attrs["norm_stats"][hook]["mean_sq_norm"]) ** 0.5
        rows = store.read_rows(hook, 0, n_rows).to(device=device, dtype=torch.float32) * self.scale
        self.train, self.eval = rows[: n_rows - cfg.eval_tokens], rows[n_rows - cfg.eval_tokens :]
        self.hook, self.d, self.device = hook, d, device

    @property
    def n_train(self) -> int:
        return len(self.train)

    def batches(self, batch_size: int, n_steps: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """`n_steps` batches; each epoch is a fresh seeded permutation, so data repeats only when it must."""
        per_epoch = self.n_train // batch_size
        if per_epoch == 0:
            raise ConfigError(f"train.batch_size: {batch_size} exceeds the {self.n_train} training rows")
        generator = torch.Generator().manual_seed(seed)
        epochs_drawn, order = 0, None
        for step in range(start_step, n_steps):
            epoch, i = divmod(step, per_epoch)
            while epochs_drawn <= epoch:  # a resumed run redraws the permutations it skipped
                order = torch.randperm(self.n_train, generator=generator).to(self.train.device)
                epochs_drawn += 1
            yield self.train[order[i * batch_size : (i + 1) * batch_size]]

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.eval), batch_size):
            yield self.eval[i : i + batch_size]
