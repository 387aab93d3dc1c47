"""Checkpoints of a training run: weights, optimiser state, data position, firing history and RNG state.

One safetensors file holds every tensor, with the rest as JSON in its metadata, and replaces the
previous checkpoint atomically, so a run killed at any moment resumes from a whole checkpoint.
Nothing is unpickled.
"""

import json
import os
from pathlib import Path

import torch

from pipeline.errors import ConfigError

FILE = "checkpoint.safetensors"


def save(folder: Path, step: int, config: dict, coder, optimizer, firing, extra: dict) -> Path:
    from safetensors.torch import save_file

    tensors = {f"coder.{k}": v.detach() for k, v in coder.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        tensors |= {f"optim.{index}.{name}": value for name, value in state.items()}
    tensors |= {"firing.last_fired": firing.last_fired, "rng.torch": torch.get_rng_state()}
    meta = {"step": step, "config": config, "param_groups": optim["param_groups"], "firing_tokens": firing.tokens, **extra}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    try:
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, tmp, metadata={"state": json.dumps(meta)})
        os.replace(tmp, folder / FILE)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / FILE


def load(folder: Path, config: dict, coder, optimizer, firing) -> dict | None:
    """Restores the run in place and returns the checkpoint's metadata, or None when there is none."""
    from safetensors import safe_open

    path = folder / FILE
    if not path.exists():
        return None
    # Read onto the CPU: load_state_dict moves each tensor to its parameter's device itself.
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads(f.metadata()["state"])
        if meta["config"] != config:
            raise ConfigError(f"{path}: checkpoint of another configuration; remove it or use another out_dir")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    coder.load_state_dict({k.removeprefix("coder."): v for k, v in tensors.items() if k.startswith("coder.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    firing.last_fired.copy_(tensors["firing.last_fired"])
    firing.tokens = meta["firing_tokens"]
    torch.set_rng_state(tensors["rng.torch"].cpu())
    return meta


def remove(folder: Path) -> None:
    (folder / FILE).unlink(missing_ok=True)
