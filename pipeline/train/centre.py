"""`train.center`: an SAE trained on its inputs less their mean, saved as a coder of the inputs themselves.

Rows that share one large direction (the store records ||mean|| / ||std|| of each hook) leave many
features dead from the start. With `train.center` every batch has the store's mean of the hook (at
the training scale) subtracted; when training ends the mean is folded into the coder's biases
(`Coder.fold_input_mean`), so its metrics, splicing and the saved coder all act on uncentred
inputs and nothing downstream needs to know.
"""

import torch

from pipeline.activations.arrays import CoderArrays
from pipeline.coders.registry import coder_class
from pipeline.errors import ConfigError


def check_center(kind: str, center: bool, store_attrs: dict, hook: str) -> None:
    """ConfigError unless `train.center` is off, or the coder is an SAE and the store records `hook`'s mean."""
    if not center:
        return
    if coder_class(kind).target_field:
        raise ConfigError(
            f"train.center: a {kind} predicts another array than it reads; centring is for SAEs, expected false"
        )
    if "mean" not in store_attrs["norm_stats"].get(hook, {}):
        raise ConfigError(
            f"train.center: the store records no mean of {hook} (harvested before means were recorded); "
            "harvest it again or set train.center=false"
        )


def input_centre(center: bool, arrays: CoderArrays, data) -> torch.Tensor | None:
    """The [d] vector every batch's inputs lose: the store's mean of the input array at the training scale."""
    if not center:
        return None
    name = arrays.inputs[0]
    return torch.tensor(data.means[name], dtype=torch.float32, device=data.device) * data.scales[name]


def fold_centre(coder, centre: torch.Tensor) -> None:
    """Folds `centre` into `coder`'s biases; with ranks, into this rank's coder or slice of it."""
    # ddp and feature-parallel runs wrap the coder they train (the whole one, or this rank's slice) as `local`.
    getattr(coder, "local", coder).fold_input_mean(centre)
