"""The hand-written losses and gradients of the dense kinds against autograd over their plain expressions."""

import pytest
import torch
from torch.nn import functional

from pipeline.coders import jumprelu_kernel
from pipeline.coders.jumprelu import JumpReLUFunction, JumpReluSAE, StepFunction
from pipeline.coders.relu import ReluSAE


def _moved(coder):
    """Biases and thresholds away from their zero initialisation, so every gradient term is exercised."""
    torch.manual_seed(1)
    with torch.no_grad():
        coder.b_enc.normal_()
        coder.b_dec.normal_()
        if hasattr(coder, "log_threshold"):
            coder.log_threshold.normal_(-1, 0.5)
    return coder


def _grads(coder, loss):
    coder.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in coder.named_parameters()}


def test_relu_kernel_equals_autograd_over_the_plain_loss():
    coder = _moved(ReluSAE(16, 64, l1_coefficient=0.3))
    x = torch.randn(32, 16)
    parts, f = coder.loss(x, sparsity_scale=0.7)
    fused = _grads(coder, parts["loss"])

    f_ref = torch.relu(functional.linear(x, coder.w_enc, coder.b_enc))
    reconstruction = (x - functional.linear(f_ref, coder.w_dec, coder.b_dec)).pow(2).sum(-1).mean()
    sparsity = (f_ref * coder.w_dec.norm(dim=0)).sum(-1).mean()
    reference = _grads(coder, reconstruction + 0.7 * 0.3 * sparsity)

    torch.testing.assert_close(f, f_ref.detach())
    torch.testing.assert_close(parts["reconstruction"], reconstruction)
    torch.testing.assert_close(parts["sparsity"], sparsity)
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], msg=name)


# Without the pre-activation loss its output gets no gradient at all, which the kernel takes as zero.
@pytest.mark.parametrize("preact_coefficient", [0.2, 0.0])
@pytest.mark.parametrize("ste_to_input", [False, True], ids=["ste-threshold", "ste-to-input"])
@pytest.mark.parametrize("penalty", ["tanh", "l0"])
def test_jumprelu_kernel_equals_autograd_over_the_plain_loss(penalty, ste_to_input, preact_coefficient, monkeypatch):
    coder = JumpReluSAE(
        16, 64, l1_coefficient=0.3, penalty=penalty, bandwidth=0.5, preact_coefficient=preact_coefficient,
        ste_to_input=ste_to_input,
    )  # fmt: skip
    coder = _moved(coder)
    x = torch.randn(77, 16)
    monkeypatch.setattr(jumprelu_kernel, "PIECE", 32 * 64)  # on CPU, three pieces of 32 rows, the last one short
    parts, f = coder.loss(x, sparsity_scale=0.7)
    fused = _grads(coder, parts["loss"])

    pre = functional.linear(x, coder.w_enc, coder.b_enc)
    theta, norm = coder.log_threshold.exp(), coder.w_dec.norm(dim=0)
    f_ref = JumpReLUFunction.apply(pre, theta, 0.5, ste_to_input)
    reconstruction = (x - functional.linear(f_ref, coder.w_dec, coder.b_dec)).pow(2).sum(-1).mean()
    if penalty == "tanh":
        sparsity = torch.tanh(coder.tanh_scale * f_ref * norm).sum(-1).mean()
    else:
        sparsity = StepFunction.apply(pre, theta, 0.5, ste_to_input).sum(-1).mean()
    preact = (torch.relu(theta - pre) * norm).sum(-1).mean()
    reference = _grads(coder, reconstruction + 0.7 * 0.3 * sparsity + preact_coefficient * preact)

    torch.testing.assert_close(f, f_ref.detach())
    for key, value in (("reconstruction", reconstruction), ("sparsity", sparsity), ("preact", preact)):
        torch.testing.assert_close(parts[key], value, msg=key)
    assert fused["log_threshold"].abs().sum() > 0
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], msg=name)


@pytest.mark.parametrize(
    "coder", [ReluSAE(32, 256), JumpReluSAE(32, 256, init_threshold=0.01)], ids=["relu", "jumprelu"]
)
def test_bfloat16_products_stay_close_to_float32(coder):
    x = torch.randn(64, 32)
    exact, _ = coder.loss(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, f = coder.loss(x)
    assert f.dtype == torch.bfloat16
    low["loss"].backward()
    assert all(p.grad.dtype == torch.float32 for p in coder.parameters())
    torch.testing.assert_close(low["reconstruction"], exact["reconstruction"], rtol=2e-2, atol=1e-3)
