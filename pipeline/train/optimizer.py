"""The trainer's optimiser: Adam in torch's fused kernel, with global-norm clipping applied as it reads the gradients.

torch's fused Adam (on CPUs and GPUs alike) updates every parameter and both its moments in one
pass, and divides the gradients by its `grad_scale` as it reads them (the hook automatic mixed
precision unscales gradients with). Handing it the clipping divisor there makes clipping cost one
read of the gradients for their norm, and no pass of its own that scales them in place.
"""

import torch

BETAS = (0.9, 0.999)


def adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=BETAS, fused=True)


def clip_divisor(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """What gradients of global norm `norm` are divided by to clip them to `max_norm` (`clip_grad_norm_`'s factor,
    inverted): 1 when they are within it."""
    return ((norm + 1e-6) / max_norm).clamp(min=1.0)


def clipped_step(optimizer: torch.optim.Adam, norm: torch.Tensor, max_norm: float) -> None:
    """One step of `optimizer` (made by `adam`) on its gradients clipped to global norm `max_norm` (their norm is
    `norm`); the gradients are then cleared."""
    optimizer.grad_scale = clip_divisor(norm, max_norm)
    optimizer.step()
    del optimizer.grad_scale
    optimizer.zero_grad(set_to_none=True)


def gradient_norm(params) -> torch.Tensor:
    """The global norm of the parameters' gradients, as `clip_grad_norm_` takes it."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
