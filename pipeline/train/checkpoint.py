"""Checkpoints of a training run: weights, optimiser state, data position, firing history and RNG state.

One safetensors file holds every tensor, with the rest as JSON in its metadata, and replaces the
previous checkpoint atomically, so a run killed at any moment resumes from a whole checkpoint.
A feature-sharded run writes one file per rank and an index instead (`save_sharded`).
Nothing is unpickled.
"""

import json
import shutil
from pathlib import Path

import torch

from pipeline.atomic import write_atomic, write_json_atomic
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.distributed.process_group import barrier
from pipeline.errors import ConfigError
from pipeline.train.sharded import bounds

FILE = "checkpoint.safetensors"


def _state(step: int, config: dict, coder, optimizer, firing, extra: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(every tensor of the run's state by name, the rest of it as JSON-ready metadata)."""
    tensors = {f"coder.{k}": v.detach() for k, v in coder.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        tensors |= {f"optim.{index}.{name}": value for name, value in state.items()}
    tensors |= {"firing.last_fired": firing.last_fired, "rng.torch": torch.get_rng_state()}
    meta = {
        "step": step,
        "config": config,
        "firing_tokens": firing.tokens,
        **extra,
    }
    return tensors, meta


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save(folder: Path, step: int, config: dict, coder, optimizer, firing, extra: dict) -> Path:
    tensors, meta = _state(step, config, coder, optimizer, firing, extra)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / FILE, tensors, {"state": json.dumps(meta)})
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
    _restore(tensors, meta, coder, optimizer, firing)
    return meta


def _restore(tensors: dict[str, torch.Tensor], meta: dict, coder, optimizer, firing) -> None:
    coder.load_state_dict({k.removeprefix("coder."): v for k, v in tensors.items() if k.startswith("coder.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    # The optimiser's settings are the run's configuration's, which the checkpoint's must equal: only its state loads.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    firing.last_fired.copy_(tensors["firing.last_fired"])
    firing.tokens = meta["firing_tokens"]
    torch.set_rng_state(tensors["rng.torch"].cpu())


def remove(folder: Path) -> None:
    (folder / FILE).unlink(missing_ok=True)
    shutil.rmtree(folder / SHARDED, ignore_errors=True)


# Feature-sharded checkpoints: each rank writes its slice of every per-feature tensor (weights,
# their Adam moments, firing history) into one file of a step folder, and the main rank then
# writes index.json, which marks the folder complete and says how to cut and join the slices.
# The files are re-sliced on loading, so a run resumes on any number of ranks, and the whole
# coder can be read back in one process.

SHARDED = "sharded-checkpoint"
INDEX = "index.json"


def _shard_file(rank: int, size: int) -> str:
    return f"shard-{rank:05d}-of-{size:05d}.safetensors"


def _feature_dims(coder, optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, int | None]:
    """The sliced dimension of each checkpoint tensor: a parameter's, its Adam moments', the firing history's."""
    names = [name for name, _ in coder.local.named_parameters()]
    dims = {f"coder.{name}": dim for name, dim in coder.feature_dims.items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, _ = key.split(".", 2)
            param = dims[f"coder.{names[int(index)]}"]
            same_shape = value.shape == coder.local.get_parameter(names[int(index)]).shape
            dims[key] = param if same_shape else None
    return dims | {"firing.last_fired": 0, "rng.torch": None}


def save_sharded(folder: Path, step: int, config: dict, coder, optimizer, firing, extra: dict) -> Path:
    """Called on every rank of a feature-sharded run with its `ShardedCoder`; returns the step folder."""
    tensors, meta = _state(step, config, coder.local, optimizer, firing, extra)
    world, root = coder.world, folder / SHARDED
    target = root / f"step-{step:09d}"
    target.mkdir(parents=True, exist_ok=True)
    _write(target / _shard_file(world.rank, world.size), tensors, {})
    barrier()
    if world.main:
        ranges = [bounds(coder.n_features, world.size, r) for r in range(world.size)]
        index = {
            "n_features": coder.n_features,
            "d_in": coder.d_in,
            "feature_dims": _feature_dims(coder, optimizer, tensors),
            "shards": [{"file": _shard_file(r, world.size), "range": span} for r, span in enumerate(ranges)],
            "meta": meta,
        }
        write_json_atomic(target / INDEX, index)
        for old in root.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def _latest(folder: Path) -> Path | None:
    complete = sorted(p.parent for p in (folder / SHARDED).glob(f"step-*/{INDEX}"))
    return complete[-1] if complete else None


def _read_features(step_dir: Path, start: int, stop: int) -> tuple[dict[str, torch.Tensor], dict]:
    """(every tensor cut to features [start, stop), the index) from the files of whichever ranks wrote them."""
    from contextlib import ExitStack

    from safetensors import safe_open

    index = json.loads((step_dir / INDEX).read_text())
    tensors = {}
    with ExitStack() as stack:
        files = [
            (stack.enter_context(safe_open(str(step_dir / s["file"]), framework="pt", device="cpu")), *s["range"])
            for s in index["shards"]
        ]
        for name, dim in index["feature_dims"].items():
            if dim is None:
                tensors[name] = files[0][0].get_tensor(name)
                continue
            pieces = []
            for f, lo, hi in files:
                a, b = max(lo, start), min(hi, stop)
                if a < b:
                    pieces.append(f.get_slice(name)[(slice(None),) * dim + (slice(a - lo, b - lo),)])
            tensors[name] = torch.cat(pieces, dim)
    return tensors, index


def load_sharded(folder: Path, config: dict, coder, optimizer, firing) -> dict | None:
    """Restores this rank's slice of the latest sharded checkpoint, whatever number of ranks wrote it."""
    step_dir = _latest(folder)
    if step_dir is None:
        return None
    tensors, index = _read_features(step_dir, coder.start, coder.stop)
    if index["meta"]["config"] != config:
        raise ConfigError(f"{step_dir}: checkpoint of another configuration; remove it or use another out_dir")
    _restore(tensors, index["meta"], coder.local, optimizer, firing)
    return index["meta"]


def load_coder(folder: Path):
    """The coder of a run folder's latest sharded checkpoint, whole, as one ordinary coder on the CPU."""
    step_dir = _latest(Path(folder))
    if step_dir is None:
        raise ConfigError(f"{folder}: no complete sharded checkpoint ({SHARDED}/step-*/{INDEX})")
    index = json.loads((step_dir / INDEX).read_text())
    tensors, _ = _read_features(step_dir, 0, index["n_features"])
    with torch.random.fork_rng():
        coder = build(AnyCoderConfig(**index["meta"]["config"]["coder"]), index["d_in"])
    coder.load_state_dict({k.removeprefix("coder."): v for k, v in tensors.items() if k.startswith("coder.")})
    return coder
