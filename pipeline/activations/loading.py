"""Activations for training: the store arrays a coder needs, scaled to E||x||^2 = d, split into train and eval rows.

The arrays (one hook for an SAE; input and target for a transcoder; every layer's MLP input and
output for a CLT, see `arrays`) sit side by side in each row, so they are shuffled together.

`ActivationData` reads the store once and keeps it in device or host memory; `open_activation_data`
picks it or the streaming loader (`stream.StreamingActivationData`) by `train.cache`. The batch
order is a pure function of the seed, so every arm of a sweep with the same seed sees the same rows
in the same order; device and host share one order, the streamed order is another. Either reads a
shard only after it matched its checksums (`store.verify.read_checked`), and refuses a corrupt store.
"""

import os
from collections.abc import Iterator

import torch

from pipeline.activations.arrays import array_means, data_arrays, open_arrays, scale_columns, side_by_side, store_source
from pipeline.activations.stream import StreamingActivationData
from pipeline.activations.transfer import batch_to_device
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.store.activation_store import ActivationStore
from pipeline.store.schema import training_rows
from pipeline.store.verify import read_checked


class ActivationData:
    order = "permutation"  # batches are seeded permutations of all training rows

    def __init__(
        self,
        store: ActivationStore,
        hook: str,
        cfg: TrainConfig,
        device: torch.device,
        storage_device: torch.device | None = None,
    ):
        """The arrays `hook` and `cfg` name (see `arrays.data_arrays`); rows are kept on `storage_device`
        (default: `device`) and batches are moved to `device`."""
        n_rows = store.layout.n_rows
        n_train = training_rows(n_rows, cfg.eval_tokens)
        self.arrays, self.d, self.scales = open_arrays(store, hook, cfg)
        self.means = array_means(store, self.arrays)
        parts = [read_checked(store, name, 0, n_rows) for name in self.arrays]
        rows = side_by_side(parts).to(device=storage_device or device, dtype=torch.float32)
        rows = scale_columns(rows, [self.scales[name] for name in self.arrays])
        self.train, self.eval = rows[:n_train], rows[n_train:]
        # The first array is the input of an SAE or transcoder: `hook` and `scale` name it.
        self.hook, self.scale, self.device = self.arrays[0], self.scales[self.arrays[0]], device
        self.source = store_source(store)  # what the rows were harvested from, recorded beside each trained coder

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
            yield batch_to_device(self.train, order[i * batch_size : (i + 1) * batch_size], self.device)

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.eval), batch_size):
            yield self.eval[i : i + batch_size].to(self.device)


def open_activation_data(
    store: ActivationStore, hook: str, cfg: TrainConfig, device: torch.device
) -> "ActivationData | StreamingActivationData":
    """The training data of `hook` (and the arrays `cfg` adds) as `train.cache` asks: on the device, in host
    memory, or streamed.

    `auto` keeps the rows on the device when their float32 copy takes under half of the free device
    memory (on a cpu device, host memory counts as the device's), else in host memory when under
    half of the available RAM, else streams them. Returns an `ActivationData` or a
    `StreamingActivationData`; both have the same interface.
    """
    mode = cfg.cache
    device = torch.device(device)
    if mode == "auto":
        needed = store.layout.n_rows * store.d_model(hook) * len(data_arrays(hook, cfg).arrays) * 4
        if device.type == "cuda" and needed < torch.cuda.mem_get_info(device)[0] / 2:
            mode = "device"
        elif needed < available_host_memory() / 2:
            mode = "host"
        else:
            mode = "none"
    if mode == "device":
        return ActivationData(store, hook, cfg, device)
    if mode == "host":
        return ActivationData(store, hook, cfg, device, storage_device=torch.device("cpu"))
    return StreamingActivationData(store, hook, cfg, device)


def available_host_memory() -> int:
    """Bytes of RAM available to new allocations: MemAvailable of /proc/meminfo, else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
