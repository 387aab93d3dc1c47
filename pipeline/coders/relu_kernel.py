"""The ReLU SAE's loss with hand-written gradients, making few passes over the [rows x features] activations.

A training step of a wide SAE is bound by its matrix products and by the passes over the
activations between them. Autograd over the plain expression reads and writes the activations
about a dozen times (bias, ReLU, penalty product, penalty sum, and their gradients). Here:

- the encoder's bias and ReLU run inside its matrix product (`torch._addmm_activation`);
- the decoder's product also yields each row's penalty sum_i f_i ||W_dec[:, i]||, from an extra
  row of norms appended to W_dec;
- backward, the penalty's gradient n_i * lambda / rows enters the product g_x_hat W_dec as one more
  column, a column of ones gives the encoder bias gradient inside the encoder weight gradient, and
  a row of ones gives each feature's total activation inside the decoder weight gradient.

That leaves one write of f, one masked copy of its gradient, and reads inside products. Products
run in `dtype` (bfloat16 on GPUs) with float32 accumulation; everything of size [rows x d] or [N]
is float32.

The weights may carry a leading arm dimension (a stack of same-shape SAEs over the same rows, see
`pipeline.train.stack`): the products become batched and the losses come back per arm.
"""

import torch

_ALIGN = 8  # tensor cores want inner dimensions that are multiples of 8


def with_column(mat: torch.Tensor, column: torch.Tensor | float, dtype: torch.dtype, dim: int = -1) -> torch.Tensor:
    """[mat | column | zeros] in `dtype`: one extra column, padded to a multiple of 8 columns, in one copy; with
    `dim=-2`, one extra row the same way.

    `mat` may be stacked ([arms, rows, cols]); `column` broadcasts against the other axis ([..., rows], or for a
    row [..., cols]).
    """
    size = mat.shape[dim]
    shape = list(mat.shape)
    shape[dim] = -(-(size + 1) // _ALIGN) * _ALIGN
    out = mat.new_empty(shape, dtype=dtype)
    grown = out.movedim(dim, -1)  # a view with the grown axis last
    grown[..., :size] = mat.movedim(dim, -1)
    grown[..., size] = column
    grown[..., size + 1 :] = 0
    return out


def encode(x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, relu: bool) -> torch.Tensor:
    """x W_enc^T + b_enc, through ReLU if `relu` (inside the product), in x's dtype: [rows, N].

    Stacked weights give [arms, rows, N]: the arms share their input, so their encoders are one
    product with all arms' features side by side, and the result is a view of it.
    """
    if w_enc.dim() == 3:
        arms, n, d = w_enc.shape
        wide = encode(x, w_enc.reshape(arms * n, d), b_enc.reshape(arms * n), relu)
        return wide.view(len(x), arms, n).transpose(0, 1)
    if relu:
        return torch._addmm_activation(b_enc, x, w_enc.t())
    return torch.addmm(b_enc, x, w_enc.t())


def weight_grad(g: torch.Tensor) -> torch.Tensor:
    """`g` (often a slice of a product's output) as a contiguous float32 gradient.

    Autograd copies a gradient whose strides differ from its parameter's; converting the slice
    straight to that layout makes the copy the only pass over it.
    """
    return g.float().contiguous()


def per_arm(value: torch.Tensor) -> torch.Tensor:
    """A scalar, or one value per arm, shaped to broadcast against [..., rows, cols]."""
    return value[..., None, None]


def losses_only(ctx, loss: torch.Tensor) -> None:
    """Sets up `ctx` of a loss whose last output is the [rows x N] activations, which is never differentiated:
    autograd would otherwise pass it a gradient of zeros of that size, a pass over memory as long as an
    elementwise one. Gradients the losses do not get are then None (`loss_gradients`)."""
    ctx.set_materialize_grads(False)
    ctx.loss_shape, ctx.loss_device = loss.shape, loss.device


def loss_gradients(ctx, *grads: torch.Tensor | None) -> list[torch.Tensor]:
    """The losses' gradients, zeros for a loss that is not used (a penalty with no weight, say)."""
    return [g if g is not None else torch.zeros(ctx.loss_shape, device=ctx.loss_device) for g in grads]


class ReluSAELoss(torch.autograd.Function):
    """(reconstruction, sparsity, f) of a ReLU SAE: mean_rows ||x - x_hat||^2, mean_rows sum_i f_i ||W_dec[:, i]||."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, w_dec, b_dec, dtype: torch.dtype):
        d = x.shape[1]
        norm = w_dec.norm(dim=-2)
        f = encode(x.to(dtype), w_enc.to(dtype), b_enc.to(dtype), relu=True)
        dec = with_column(w_dec, norm, dtype, dim=-2)  # [..., d + 8, N]: W_dec's own layout, no transposed copy
        out = (f @ dec.mT).float()
        err = out[..., :d] + b_dec.unsqueeze(-2) - x
        ctx.save_for_backward(x, f, err, dec, w_dec, norm)
        ctx.mark_non_differentiable(f)
        reconstruction = err.pow(2).sum(-1).mean(-1)
        losses_only(ctx, reconstruction)
        return reconstruction, out[..., d].mean(-1), f

    @staticmethod
    def backward(ctx, g_reconstruction, g_sparsity, _):
        g_reconstruction, g_sparsity = loss_gradients(ctx, g_reconstruction, g_sparsity)
        x, f, err, dec, w_dec, norm = ctx.saved_tensors
        rows, d = x.shape
        dtype = f.dtype
        g_x_hat = err * per_arm(2 * g_reconstruction / rows)
        g_norm_term = g_sparsity / rows
        g_f = with_column(g_x_hat, g_norm_term[..., None], dtype) @ dec
        g_pre = torch.ops.aten.threshold_backward(g_f, f, 0.0)
        g_enc = g_pre.mT @ with_column(x, 1.0, dtype)
        g_dec = with_column(g_x_hat, 1.0, dtype).mT @ f
        # The norm's gradient per feature first ([..., 1, N]), so the [d x N] work is one pass (in float32).
        per_feature = per_arm(g_norm_term) * g_dec[..., d : d + 1, :] / norm.clamp_min(1e-12).unsqueeze(-2)
        g_w_dec = torch.addcmul(g_dec[..., :d, :], w_dec, per_feature)
        return None, weight_grad(g_enc[..., :d]), weight_grad(g_enc[..., d]), g_w_dec, g_x_hat.sum(-2), None
