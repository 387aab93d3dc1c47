"""The weighted sum of a table's rows per bag (an embedding bag) and its gradients, as Triton kernels.

Bag b holds the entries starts[b] <= e < starts[b + 1] (the last bag runs to the last entry), and

    out[b] = sum_e weights[e] * table[ids[e]]

On a GPU the sparse decoders of `pipeline.coders.topk_kernel` sum their active decoder columns this way
when Triton is installed; `pipeline.bench.kernels` times it there against `torch.nn.functional.embedding_bag`.
The backward pass is two more of the same reads: the weights' gradient is one dot product per entry,
table[ids[e]] . grad[b], and the table's gradient is the same sum with the roles swapped, each table row
summing its entries' weights times their bags' gradients. The entries are sorted by row for that, rather
than added atomically, so the sum runs in one order and a training step gives the same numbers every time.

The tests run these kernels on CPU through Triton's interpreter (`TRITON_INTERPRET=1`).
"""

import torch
import triton
import triton.language as tl

BLOCK = 128  # columns of the table each program reads at once: one 512-byte row chunk in float32


@triton.jit
def _sum_kernel(table, ids, bounds, weights, out, d, BLOCK: tl.constexpr):
    """out[bag, chunk] = the bag's weighted sum of its rows' chunk; one program per (bag, chunk of columns)."""
    bag = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < d
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for e in range(tl.load(bounds + bag), tl.load(bounds + bag + 1)):
        row = tl.load(ids + e).to(tl.int64)
        acc += tl.load(weights + e) * tl.load(table + row * d + cols, mask=inside, other=0.0)
    tl.store(out + bag * d + cols, acc, mask=inside)


@triton.jit
def _dots_kernel(table, ids, bounds, grad, out, d, BLOCK: tl.constexpr):
    """out[e] = table[ids[e]] . grad[bag of e]; one program per bag, the columns in chunks."""
    bag = tl.program_id(0).to(tl.int64)
    for e in range(tl.load(bounds + bag), tl.load(bounds + bag + 1)):
        row = tl.load(ids + e).to(tl.int64)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, d, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < d
            acc += tl.load(table + row * d + cols, mask=inside, other=0.0) * tl.load(
                grad + bag * d + cols, mask=inside, other=0.0
            )
        tl.store(out + e, tl.sum(acc, axis=0))


def _sums(table: torch.Tensor, ids: torch.Tensor, bounds: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    bags, d = len(bounds) - 1, table.shape[1]
    out = table.new_empty(bags, d)
    if bags:
        _sum_kernel[(bags, triton.cdiv(d, BLOCK))](table, ids, bounds, weights, out, d, BLOCK=BLOCK)
    return out


def _dots(table: torch.Tensor, ids: torch.Tensor, bounds: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    out = grad.new_empty(len(ids))
    if len(ids):
        _dots_kernel[(len(bounds) - 1,)](table, ids, bounds, grad, out, table.shape[1], BLOCK=BLOCK)
    return out


class _BagSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, bounds, weights):
        ctx.save_for_backward(table, ids, bounds, weights)
        return _sums(table, ids, bounds, weights)

    @staticmethod
    def backward(ctx, grad):
        table, ids, bounds, weights = ctx.saved_tensors
        grad = grad.float().contiguous()
        g_table = g_weights = None
        if ctx.needs_input_grad[3]:
            g_weights = _dots(table, ids, bounds, grad)
        if ctx.needs_input_grad[0]:
            bags = torch.arange(len(bounds) - 1, device=ids.device)
            bag_of_entry = bags.repeat_interleave(bounds.diff(), output_size=len(ids))
            rows, order = ids.sort(stable=True)
            row_bounds = torch.searchsorted(rows, torch.arange(len(table) + 1, device=ids.device))
            g_table = _sums(grad, bag_of_entry[order], row_bounds, weights[order])
        return g_table, None, None, g_weights


def bag_sum(table: torch.Tensor, ids: torch.Tensor, starts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[len(starts), d] float32: per bag, the sum of `weights` times the rows `ids` of `table` ([rows, d]),
    differentiable in `table` and `weights`; `starts` ascend and each bag runs to the next one's start."""
    ids = ids.contiguous()
    bounds = torch.cat([starts, starts.new_tensor([len(ids)])])
    return _BagSum.apply(table.float().contiguous(), ids, bounds, weights.float().contiguous())
