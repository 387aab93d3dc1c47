"""The trainer's Adam: clipping folded into torch's fused kernel steps as clip_grad_norm_ and the unfused Adam do."""

import pytest
import torch

from pipeline.train.optimizer import adam, clip_divisor, clipped_step, gradient_norm


def test_a_clipped_fused_step_equals_clip_grad_norm_then_the_unfused_adam():
    torch.manual_seed(0)
    start = [torch.randn(16, 8), torch.randn(8)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    torchs = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer, reference = adam(ours, 1e-2), torch.optim.Adam(torchs, lr=1e-2, fused=False)
    for step in range(5):
        grads = [torch.randn_like(p) * 10 ** (step - 2) for p in start]  # within the norm at first, then clipped
        for p, q, g in zip(ours, torchs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        clipped_step(optimizer, gradient_norm(ours), 0.5)
        torch.nn.utils.clip_grad_norm_(torchs, 0.5)
        reference.step()
        for p, q in zip(ours, torchs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert all(p.grad is None for p in ours)
    assert not hasattr(optimizer, "grad_scale")  # the next step, or another caller, sees no stale divisor


@pytest.mark.parametrize(("norm", "divisor"), [(0.25, 1.0), (0.5, 1.0), (4.0, 8.0)])
def test_the_clip_divisor_scales_only_gradients_over_the_norm(norm, divisor):
    assert clip_divisor(torch.tensor(norm), 0.5).item() == pytest.approx(divisor, rel=1e-5)


def test_the_gradient_norm_skips_parameters_without_gradients():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([3.0, 4.0])
    assert gradient_norm([a, b]).item() == pytest.approx(5.0)
