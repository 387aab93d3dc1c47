"""Each row's k largest entries, as Triton kernels: rounds over chunks of the row, reading it once.

TopK's step selects k latents per row from the [rows x N] pre-activations; on a GPU `torch.topk` makes
several passes over each row (one per digit of its radix selection), and on the H100 it and the
embedding bag's gradient took half the step. Here the first round reads each chunk of CHUNK entries
of a row once, turns every entry into a 64-bit key that sorts as the entry does (the value's bits made
to order as an integer, the column below them), and keeps the chunk's K largest keys (Triton's bitonic
`tl.topk`, K the power of two at or above k). Each later round keeps the K largest of CHUNK of those
candidates, until K remain; the first k of them, largest first, carry the columns in their low bits.

NaN sorts above every number, as in `torch.topk`; of equal values the larger column wins. The tests
run these kernels on CPU through Triton's interpreter (`TRITON_INTERPRET=1`).
"""

import torch
import triton
import triton.language as tl

CHUNK = 1024  # entries (or candidates) of a row each program reads at once
ROWS = 4  # rows each program reads: 4 x CHUNK keys, 32 KiB
PAD = tl.constexpr(-(2**63))  # the key of an entry past a row's end, below every entry's


@triton.jit
def _round_kernel(
    src, out, rows, width, K: tl.constexpr, CHUNK: tl.constexpr, ROWS: tl.constexpr, FROM_VALUES: tl.constexpr
):
    """out[row, chunk * K : (chunk + 1) * K] = the K largest keys of the row's chunk, largest first, for ROWS rows;
    the keys are made from the values in the first round (`FROM_VALUES`), read as they are in later ones."""
    row = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]
    chunk = tl.program_id(1)
    cols = (chunk * CHUNK + tl.arange(0, CHUNK))[None, :]
    inside = (row < rows) & (cols < width)
    if FROM_VALUES:
        value = tl.load(src + row * width + cols, mask=inside, other=0.0).to(tl.float32)
        bits = value.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative values' magnitude bits flipped: integer order
        ordered = tl.where(value != value, 0x7FFFFFFF, ordered)
        keys = (ordered.to(tl.int64) << 32) | cols.to(tl.int64)
    else:
        keys = tl.load(src + row * width + cols, mask=inside, other=0)
    top = tl.topk(tl.where(inside, keys, PAD), K, dim=1)
    at = (row * tl.num_programs(1) + chunk) * K + tl.arange(0, K)[None, :]
    tl.store(out + at, top, mask=row < rows)


def _round(src: torch.Tensor, keep: int, tile: tuple[int, int], from_values: bool) -> torch.Tensor:
    (rows, width), (tile_rows, chunk) = src.shape, tile
    chunk = max(chunk, 2 * keep)  # each round at least halves the candidates
    out = src.new_empty(rows, triton.cdiv(width, chunk) * keep, dtype=torch.int64)
    if rows:
        grid = (triton.cdiv(rows, tile_rows), triton.cdiv(width, chunk))
        _round_kernel[grid](src, out, rows, width, K=keep, CHUNK=chunk, ROWS=tile_rows, FROM_VALUES=from_values)
    return out


def top_ids(pre: torch.Tensor, k: int, tile: tuple[int, int] = (ROWS, CHUNK)) -> torch.Tensor:
    """[..., rows, k] int64 ids of each row's k largest entries of `pre` ([..., rows, N], k <= N), largest first.

    `tile` is what one program reads: (rows, entries or candidates of each), both powers of two.
    """
    *lead, width = pre.shape
    keep = triton.next_power_of_2(k)
    keys = _round(pre.reshape(-1, width).contiguous(), keep, tile, from_values=True)
    while keys.shape[1] > keep:
        keys = _round(keys, keep, tile, from_values=False)
    return (keys[:, :k] & 0xFFFFFFFF).view(*lead, k)
