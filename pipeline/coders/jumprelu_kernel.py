"""The JumpReLU SAE's loss with hand-written gradients: matrix products plus one fused pass each way.

Autograd over the plain expression makes a pass over the [rows x features] tensors for every
elementwise operation (threshold, mask, penalty, their gradients): about two dozen. Here the
elementwise work between the products is one function forward (`_activate`: f and each row's
penalties) and one backward (`_pre_gradient`: the gradient to the pre-activations and the
per-feature sums for the threshold and decoder-norm gradients), which torch.compile turns into fused
kernels on CUDA and a CPU runs on pieces of rows that stay in its cache. Products run in `dtype`
(bfloat16 on GPUs) with float32 accumulation. As for relu, the weights may carry a leading arm
dimension (a stack of SAEs over the same rows).

The gradients are those of `pipeline.coders.jumprelu` (see its docstring), with n_i = ||W_dec[:, i]||,
g_S and g_P the upstream gradients of the sparsity and pre-activation terms, and B rows:

    g_f     = g_x_hat W_dec + [tanh] g_S c n (1 - tanh^2(c f n)) / B
    g_pre   = g_f * H(pre - theta) - g_P n H(theta - pre) / B
              [ste_to_input] + (theta / eps) K g_f + [l0] (1 / eps) K g_S / B
    g_theta = sum_rows -(theta / eps) K g_f + [l0] -(1 / eps) K g_S / B + g_P n H(theta - pre) / B
    g_n     = sum_rows [tanh] g_S c f (1 - tanh^2) / B + g_P ReLU(theta - pre) / B
"""

import torch

from pipeline.coders.relu_kernel import encode, loss_gradients, losses_only, per_arm, weight_grad, with_column


def _activate(pre, theta, norm, tanh_scale: float, tanh_penalty: bool):
    """(f, per-row sparsity sum, per-row pre-activation penalty sum); `theta` and `norm` are [..., 1, N]."""
    f = torch.where(pre > theta, pre, 0.0)
    f32 = f.float()
    if tanh_penalty:
        sparsity = torch.tanh(tanh_scale * f32 * norm).sum(-1)
    else:
        sparsity = (pre > theta).float().sum(-1)
    preact = (torch.relu(theta - pre.float()) * norm).sum(-1)
    return f, sparsity, preact


def _pre_gradient(
    g_f,
    pre,
    theta,
    norm,
    g_s,
    g_p,
    rows: int,
    tanh_scale: float,
    bandwidth: float,
    tanh_penalty: bool,
    ste_to_input: bool,
):
    """(g_pre, g_theta, g_norm) from the decoder's gradient to f; see the module docstring.

    `theta` and `norm` are [..., 1, N], the upstream gradients g_s and g_p [..., 1, 1] (one per
    arm of a stack): as tensors, not numbers, they cost no device sync and no recompilation each
    time the penalty's warm-up changes them. `rows` is the batch's (`pre` may hold some of its rows);
    g_theta and g_norm, sums over `pre`'s rows, come back [..., N].
    """
    pre32 = pre.float()
    above = pre32 > theta
    g = g_f.float()
    g_norm = torch.zeros_like(norm)
    if tanh_penalty:
        f = torch.where(above, pre32, 0.0)
        slope = 1 - torch.tanh(tanh_scale * f * norm).pow(2)
        g = g + (g_s * tanh_scale / rows) * norm * slope
        g_norm = g_norm + (g_s * tanh_scale / rows) * (f * slope).sum(-2, keepdim=True)
    kernel = ((pre32 - theta).abs() < bandwidth / 2).float()
    below = (~above).float()
    g_theta = (-(theta / bandwidth) * kernel * g).sum(-2, keepdim=True) + (g_p / rows) * norm * below.sum(
        -2, keepdim=True
    )
    if not tanh_penalty:
        g_theta = g_theta - (g_s / (bandwidth * rows)) * kernel.sum(-2, keepdim=True)
    g_norm = g_norm + (g_p / rows) * torch.relu(theta - pre32).sum(-2, keepdim=True)
    g_pre = torch.where(above, g, -(g_p / rows) * norm)
    if ste_to_input:  # the pre-activation's pseudo-derivative is the negative of the threshold's
        g_pre = g_pre + (theta / bandwidth) * kernel * g
        if not tanh_penalty:
            g_pre = g_pre + (g_s / (bandwidth * rows)) * kernel
    return g_pre.to(pre.dtype), g_theta.squeeze(-2), g_norm.squeeze(-2)


# Entries per piece of the elementwise passes on a CPU (whole rows): a 1 MiB float32 piece of every operand
# stays in the CPU's cache for the pass's two dozen operations, which over whole tensors would each read memory
# again; pieces much smaller would cost more in calls than they save.
PIECE = 1 << 18
_compiled: dict = {}


def _on_gpu(fn):
    """`fn` compiled into fused kernels (once per function; each shape compiles once)."""
    if fn not in _compiled:
        # Each shape (width, batch, arms of a stack, the shorter last evaluation batch) compiles once;
        # a sweep's process meets more than dynamo's default of 8 before it would fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def _by_pieces(fn, row_args: tuple, rest: tuple) -> tuple:
    """`fn` over pieces of about `PIECE` entries (whole rows) of the [..., rows, N] tensors `row_args`, with `rest`
    whole: its first output, of the pieces' shape, put together as each piece comes, while that is in the cache
    (joining them afterwards would read them all from memory again); its other outputs as one tuple per output
    of the pieces' values."""
    rows = max(1, PIECE * row_args[0].shape[-2] // row_args[0].numel())
    whole, others = None, []
    for start, piece in zip(range(0, row_args[0].shape[-2], rows), zip(*(a.split(rows, dim=-2) for a in row_args))):
        first, *more = fn(*piece, *rest)
        if whole is None:
            whole = first.new_empty(row_args[0].shape)
        whole[..., start : start + first.shape[-2], :] = first
        others.append(more)
    return whole, *zip(*others)


def activate(pre, theta, norm, tanh_scale: float, tanh_penalty: bool):
    """`_activate`, fused on a GPU and by pieces of rows on a CPU."""
    if pre.is_cuda:
        return _on_gpu(_activate)(pre, theta, norm, tanh_scale, tanh_penalty)
    f, sparsity, preact = _by_pieces(_activate, (pre,), (theta, norm, tanh_scale, tanh_penalty))
    return f, torch.cat(sparsity, -1), torch.cat(preact, -1)


def pre_gradient(g_f, pre, *rest):
    """`_pre_gradient`, fused on a GPU and by pieces of rows on a CPU (the per-feature sums added up)."""
    if pre.is_cuda:
        return _on_gpu(_pre_gradient)(g_f, pre, *rest)
    g_pre, g_theta, g_norm = _by_pieces(_pre_gradient, (g_f, pre), rest)
    return g_pre, sum(g_theta), sum(g_norm)


class JumpReluSAELoss(torch.autograd.Function):
    """(reconstruction, sparsity, preact, f); the sparsity is the tanh or the L0 penalty (see jumprelu.py)."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, w_dec, b_dec, log_threshold, hp: dict, dtype: torch.dtype):
        rows = x.shape[0]
        theta, norm = log_threshold.exp(), w_dec.norm(dim=-2)
        pre = encode(x.to(dtype), w_enc.to(dtype), b_enc.to(dtype), relu=False)
        f, sparsity, preact = activate(
            pre, theta.unsqueeze(-2), norm.unsqueeze(-2), hp["tanh_scale"], hp["penalty"] == "tanh"
        )
        w_dec_low = w_dec.to(dtype)
        err = (f @ w_dec_low.mT).float() + b_dec.unsqueeze(-2) - x
        ctx.save_for_backward(x, pre, f, err, w_dec_low, w_dec, theta, norm)
        ctx.hp = hp
        ctx.mark_non_differentiable(f)
        reconstruction = err.pow(2).sum(-1).mean(-1)
        losses_only(ctx, reconstruction)
        return reconstruction, sparsity.sum(-1) / rows, preact.sum(-1) / rows, f

    @staticmethod
    def backward(ctx, g_reconstruction, g_sparsity, g_preact, _):
        g_reconstruction, g_sparsity, g_preact = loss_gradients(ctx, g_reconstruction, g_sparsity, g_preact)
        x, pre, f, err, w_dec_low, w_dec, theta, norm = ctx.saved_tensors
        hp, (rows, d), dtype = ctx.hp, x.shape, pre.dtype
        g_x_hat = err * per_arm(2 * g_reconstruction / rows)
        g_f = g_x_hat.to(dtype) @ w_dec_low
        g_pre, g_theta, g_norm = pre_gradient(
            g_f, pre, theta.unsqueeze(-2), norm.unsqueeze(-2), per_arm(g_sparsity), per_arm(g_preact), rows,
            hp["tanh_scale"], hp["bandwidth"], hp["penalty"] == "tanh", hp["ste_to_input"],
        )  # fmt: skip
        g_enc = g_pre.mT @ with_column(x, 1.0, dtype)
        g_w_dec = torch.addcmul(g_x_hat.to(dtype).mT @ f, w_dec, (g_norm / norm.clamp_min(1e-12)).unsqueeze(-2))
        return (
            None,
            weight_grad(g_enc[..., :d]),
            weight_grad(g_enc[..., d]),
            g_w_dec,
            g_x_hat.sum(-2),
            g_theta * theta,
            None,
            None,
        )
