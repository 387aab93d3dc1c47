"""Hook points (`resid_post.L`, `mlp_in.L`, `mlp_out.L`) and capturing them in one forward pass."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import ConfigError

SITES = ("resid_post", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class HookPoint:
    site: str  # resid_post: the block's output; mlp_in / mlp_out: its MLP's input / output
    layer: int

    @property
    def name(self) -> str:
        return f"{self.site}.{self.layer}"


def parse_hook(name: str, n_layers: int) -> HookPoint:
    site, _, layer = name.rpartition(".")
    if site not in SITES or not layer.isdigit():
        raise ConfigError(f"harvest.hooks: {name!r} should be one of {', '.join(s + '.L' for s in SITES)}")
    if int(layer) >= n_layers:
        raise ConfigError(f"harvest.hooks: layer {layer} of {name!r} is out of range; the model has {n_layers} layers")
    return HookPoint(site, int(layer))


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The transformer's list of blocks: the ModuleList with one entry per layer."""
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ConfigError(f"model.name: found no list of {n_layers} transformer blocks in {type(model).__name__}")


def _mlp_of(block: nn.Module, point: HookPoint) -> nn.Module:
    mlp = getattr(block, "mlp", None)
    if mlp is None:
        raise ConfigError(f"harvest.hooks: {point.name} needs a block with an `mlp` module; this model has none")
    return mlp


class _Done(Exception):
    """Raised after the last needed hook so the rest of the model is not computed."""


@contextmanager
def capture(model: nn.Module, points: list[HookPoint], n_layers: int):
    """Yields a dict filled with each hook's [batch, seq, d] tensor during the forward pass inside."""
    blocks = find_blocks(model, n_layers)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(point: HookPoint, take_input: bool):
        def hook(_module, args, output):
            value = args[0] if take_input else output
            captured[point.name] = (value[0] if isinstance(value, tuple) else value).detach()
            if len(captured) == len(points):
                raise _Done

        return hook

    for point in points:
        block = blocks[point.layer]
        module = block if point.site == "resid_post" else _mlp_of(block, point)
        handles.append(module.register_forward_hook(make_hook(point, point.site == "mlp_in")))
    try:
        yield captured
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()


def run_to_hooks(model: nn.Module, input_ids: torch.Tensor, points: list[HookPoint], n_layers: int) -> dict:
    """Forward `input_ids` only as far as the deepest hook; returns {hook name: activations}."""
    with torch.no_grad(), capture(model, points, n_layers) as captured:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return captured
