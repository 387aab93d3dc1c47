"""TopK's sparse training kernels: each row's selection, gradients for the chosen latents alone, embedding bags.

`row_top` chooses each row's k latents for TopK (Triton's kernels on a GPU, `torch.topk` elsewhere),
`SelectedPreActivations` gathers the pre-activations of the latents a TopK or BatchTopK selection chose
and gives gradients to the weights through them alone, and `sparse_decode` (k latents per row,
`SparseActs`), `batch_decode` (any number per row, `BatchSparseActs`) and `prefix_decode` (the same, over
each of nested prefixes of the latents) sum only the active decoder columns in bags (`column_bags`: Triton
kernels on a GPU, torch's embedding bag elsewhere), so a step of `topk`, `batchtopk`, `matryoshka` and their AuxK
term never builds a differentiable [rows x N] tensor. The weights may carry a leading arm dimension (a stack of
coders, see `pipeline.train.stack`).
"""

from importlib.util import find_spec

import torch
from torch import nn

from pipeline.coders.base import BatchSparseActs, SparseActs, arm_offsets


class SelectedPreActivations(torch.autograd.Function):
    """The entries `flat` of the pre-activations `pre` = W_enc (x - b_dec) + b_enc laid out row by row
    ([rows x N] as [rows * N]), differentiable in the weights.

    W_enc's gradient is one dense product on a GPU and a sum over the selected entries on a CPU (see
    `dense_encoder_gradient`). b_dec's gradient is minus the encoder rows weighted by b_enc's gradient.
    The weights may carry a leading arm dimension (a stack of coders), and `pre` and `flat` then do too.
    """

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, b_dec, pre, flat):
        ctx.save_for_backward(x, w_enc, b_dec, flat)
        ctx.dtype = pre.dtype
        return pre.flatten(-2).gather(-1, flat).float()

    @staticmethod
    def backward(ctx, grad):
        x, w_enc, b_dec, flat = ctx.saved_tensors
        n_features = w_enc.shape[-2]
        centred = (x - b_dec.unsqueeze(-2)).to(ctx.dtype)
        encoder_gradient = dense_encoder_gradient if grad.is_cuda else sparse_encoder_gradient
        g_w_enc = encoder_gradient(grad, flat, centred, n_features)
        ids = arm_offsets((flat % n_features).unsqueeze(-2), n_features).flatten()
        g_b_enc = grad.new_zeros(w_enc.shape[:-1].numel()).index_add_(0, ids, grad.flatten().float())
        g_b_enc = g_b_enc.view(w_enc.shape[:-1])
        g_b_dec = -(g_b_enc.unsqueeze(-2) @ w_enc).squeeze(-2)
        return None, g_w_enc, g_b_enc, g_b_dec, None, None


def dense_encoder_gradient(grad, flat, centred, n_features: int) -> torch.Tensor:
    """[..., N, d] float32 gradient of W_enc from `grad` at the row-major entries `flat` of [..., rows x N]:
    the gradient scattered into a dense [rows x N] matrix, then one product with the centred inputs.

    Kept on a GPU, where tensor cores run the product and the H100 figures were taken with it; the
    kernel benchmark (`pipeline.bench.kernels`) times it there against `sparse_encoder_gradient`.
    """
    rows = centred.shape[-2]
    dense = grad.new_zeros(*flat.shape[:-1], rows * n_features, dtype=centred.dtype)
    dense.scatter_(-1, flat, grad.to(centred.dtype))
    return (dense.view(*flat.shape[:-1], rows, n_features).mT @ centred).float()


def sparse_encoder_gradient(grad, flat, centred, n_features: int) -> torch.Tensor:
    """The same gradient as `dense_encoder_gradient`, summed over the selected entries alone.

    A latent's encoder row gets the sum of its entries' gradients times their rows' centred inputs:
    one bag per latent over the entries sorted by latent. On a CPU the dense product costs
    N/k times these FLOPs, and its [rows x N] matrix a pass over memory more.
    """
    lead, (rows, d) = flat.shape[:-1], centred.shape[-2:]
    arms = torch.arange(lead.numel(), device=flat.device).view(*lead, 1)
    latents, order = (flat % n_features + n_features * arms).flatten().sort()
    inputs = (flat // n_features + rows * arms).flatten()[order]
    starts = torch.searchsorted(latents, torch.arange(lead.numel() * n_features, device=flat.device))
    weights = grad.flatten()[order].float()
    rows_in = centred.expand(*lead, rows, d).reshape(-1, d).float()
    return column_bags(rows_in, inputs, starts, weights).view(*lead, n_features, d)


def row_major(index: torch.Tensor, n_features: int) -> torch.Tensor:
    """[..., rows, k] latent ids of each row as [..., rows * k] ids into the rows' [rows x N] laid out row by row."""
    rows = torch.arange(index.shape[-2], device=index.device).unsqueeze(-1)
    return (index + n_features * rows).flatten(-2)


def decoder_rows(w_dec: torch.Tensor) -> torch.Tensor:
    """[arms * N, d]: the decoder's columns (of every arm) as the contiguous rows an embedding bag gathers.

    W_dec is [d, N], so its columns are strided; gathering them in place reads one element per cache
    line (on CPU the bag then takes about 40 times as long). One copy per step makes each column
    one contiguous read, and its gradient comes back through the copy.
    """
    return w_dec.mT.contiguous().view(-1, w_dec.shape[-2])


TRITON = find_spec("triton") is not None  # it comes with torch's CUDA builds on Linux


def column_bags(table: torch.Tensor, ids: torch.Tensor, starts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[len(starts), d] float32: per bag of entries (from its start to the next bag's), the sum of `weights` times
    the rows `ids` of `table` ([rows, d]: the decoder's columns from `decoder_rows`, or inputs), differentiable in
    both.

    Triton's kernels (`pipeline.coders.triton_bag`) on a GPU where installed, whose table gradient is summed in
    one order; torch's embedding bag elsewhere. In float32: CUDA has no bfloat16 kernel for the gradient of the
    embedding bag's weights.
    """
    if table.is_cuda and TRITON:
        from pipeline.coders.triton_bag import bag_sum  # imports Triton, which takes seconds, only where it runs

        return bag_sum(table, ids, starts, weights)
    return nn.functional.embedding_bag(ids, table, starts, mode="sum", per_sample_weights=weights.float())


def row_top(pre: torch.Tensor, k: int) -> torch.Tensor:
    """[..., rows, k] ids of each row's k largest pre-activations, in no set order: Triton's rounds over chunks of
    the rows (`pipeline.coders.triton_topk`, one read of them) on a GPU where installed; `torch.topk` elsewhere."""
    if pre.is_cuda and TRITON:
        from pipeline.coders.triton_topk import top_ids

        return top_ids(pre, k)
    return pre.topk(k, dim=-1, sorted=False).indices


def sparse_decode(w_dec: torch.Tensor, f: SparseActs) -> torch.Tensor:
    """W_dec f without the decoder bias, summing only the active columns: one bag per (arm, row) over all arms'
    columns."""
    (d, n_features), k = w_dec.shape[-2:], f.index.shape[-1]
    ids = arm_offsets(f.index, n_features).flatten()
    starts = torch.arange(0, len(ids), k, device=ids.device)
    out = column_bags(decoder_rows(w_dec), ids, starts, f.values.flatten())
    return out.view(*f.index.shape[:-1], d)


def batch_decode(w_dec: torch.Tensor, f: BatchSparseActs) -> torch.Tensor:
    """W_dec f without the decoder bias for a selection over the whole batch: one bag of columns per row."""
    return prefix_decode(w_dec, f, [f.n_features])[..., 0, :, :]


def prefix_decode(w_dec: torch.Tensor, f: BatchSparseActs, sizes: list[int]) -> torch.Tensor:
    """[..., len(sizes), rows, d]: for each prefix size m of increasing `sizes` (the last N), W_dec f over the first m
    latents alone, without the decoder bias.

    One bag per (arm, row, group of latents between two sizes), then a running sum over the groups. The ids
    ascend, so each bag's entries are consecutive and the bags' starts are where each bag's first id would go.
    """
    (d, n_features), lead, groups = w_dec.shape[-2:], f.flat.shape[:-1], len(sizes)
    arms = torch.arange(lead.numel(), device=f.flat.device).unsqueeze(-1)
    flat = f.flat.reshape(len(arms), -1)
    latents = flat % n_features
    bounds = torch.tensor(sizes[:-1], dtype=latents.dtype, device=flat.device)
    group = torch.bucketize(latents, bounds, right=True)
    bags = ((flat // n_features + f.rows * arms) * groups + group).flatten()
    starts = torch.searchsorted(bags, torch.arange(len(arms) * f.rows * groups, device=bags.device))
    ids = (latents + n_features * arms).flatten()
    out = column_bags(decoder_rows(w_dec), ids, starts, f.values.flatten())
    return out.view(*lead, f.rows, groups, d).cumsum(-2).movedim(-2, -3)
