"""Hook points (`resid_pre.L`, `resid_post.L`, `mlp_in.L`, `mlp_out.L`) and capturing them in one forward pass."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import ConfigError

SITES = ("resid_pre", "resid_post", "mlp_in", "mlp_out")
_INPUT_SITES = ("resid_pre", "mlp_in")  # captured from the module's input rather than its output


@dataclass(frozen=True)
class HookPoint:
    site: str  # resid_pre / resid_post: the block's input / output; mlp_in / mlp_out: its MLP's input / output
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


def module_of(block: nn.Module, point: HookPoint) -> nn.Module:
    """The module whose input or output is the hook point: the block, or its MLP."""
    if point.site.startswith("resid"):
        return block
    mlp = getattr(block, "mlp", None)
    if mlp is None:
        raise ConfigError(f"harvest.hooks: {point.name} needs a block with an `mlp` module; this model has none")
    return mlp


def is_input_site(point: HookPoint) -> bool:
    return point.site in _INPUT_SITES


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A block's or MLP's input, whether passed by position or as `hidden_states=`."""
    return args[0] if args else kwargs["hidden_states"]


class _Done(Exception):
    """Raised after the last needed hook so the rest of the model is not computed."""


@contextmanager
def capture(model: nn.Module, points: list[HookPoint], n_layers: int):
    """Yields a dict filled with each hook's [batch, seq, d] tensor during the forward pass inside."""
    blocks = find_blocks(model, n_layers)
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def keep(point: HookPoint, value) -> None:
        captured[point.name] = (value[0] if isinstance(value, tuple) else value).detach()
        if len(captured) == len(points):
            raise _Done

    def input_hook(point: HookPoint):
        return lambda _module, args, kwargs: keep(point, first_input(args, kwargs))

    def output_hook(point: HookPoint):
        return lambda _module, _args, output: keep(point, output)

    for point in points:
        module = module_of(blocks[point.layer], point)
        if is_input_site(point):
            handles.append(module.register_forward_pre_hook(input_hook(point), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(output_hook(point)))
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
