"""TopK's sparse training kernels: gradients for the chosen latents only, and decoding by embedding bag.

`SelectedPreActivations` gathers the pre-activations of the latents a TopK selection chose and gives
gradients to the weights through them alone (one dense product backward), and `sparse_decode` sums
only the active decoder columns of `SparseActs` with an embedding bag, so a step of `topk`, `batchtopk`
and their AuxK term never builds a differentiable [rows x N] tensor. The weights may carry a leading arm
dimension (a stack of coders, see `pipeline.train.stack`).
"""

import torch
from torch import nn

from pipeline.coders.base import SparseActs, arm_offsets


class SelectedPreActivations(torch.autograd.Function):
    """The entries `index` of the pre-activations `pre` = W_enc (x - b_dec) + b_enc, differentiable in the weights.

    Backward scatters the [rows, k] gradient into a [rows x N] matrix for one dense product with
    the inputs: tensor cores do that faster than any gather over the selected encoder rows.
    b_dec's gradient is minus the encoder rows weighted by b_enc's gradient. The weights may carry
    a leading arm dimension (a stack of coders), and `pre` and `index` then do too.
    """

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, b_dec, pre, index):
        ctx.save_for_backward(x, w_enc, b_dec, index)
        ctx.shape, ctx.dtype = pre.shape, pre.dtype
        return pre.gather(-1, index).float()

    @staticmethod
    def backward(ctx, grad):
        x, w_enc, b_dec, index = ctx.saved_tensors
        n_features = ctx.shape[-1]
        dense = grad.new_zeros(ctx.shape, dtype=ctx.dtype).scatter_(-1, index, grad.to(ctx.dtype))
        g_w_enc = (dense.mT @ (x - b_dec.unsqueeze(-2)).to(ctx.dtype)).float()
        ids = arm_offsets(index, n_features).flatten()
        g_b_enc = grad.new_zeros(w_enc.shape[:-1].numel()).index_add_(0, ids, grad.flatten().float())
        g_b_enc = g_b_enc.view(w_enc.shape[:-1])
        g_b_dec = -(g_b_enc.unsqueeze(-2) @ w_enc).squeeze(-2)
        return None, g_w_enc, g_b_enc, g_b_dec, None, None


def sparse_decode(w_dec: torch.Tensor, f: SparseActs) -> torch.Tensor:
    """W_dec f without the decoder bias, summing only the active columns.

    In float32: CUDA has no bfloat16 kernel for the gradient of the embedding bag's weights. A
    stack's arms are one bag per (arm, row) over all arms' columns.
    """
    (d, n_features), k = w_dec.shape[-2:], f.index.shape[-1]
    columns = w_dec.mT.reshape(-1, d)
    ids = arm_offsets(f.index, n_features).reshape(-1, k)
    out = nn.functional.embedding_bag(ids, columns, per_sample_weights=f.values.reshape(-1, k).float(), mode="sum")
    return out.view(*f.index.shape[:-1], d)
