"""Triton's row selection (`pipeline.coders.triton_topk`) against `torch.topk`, run by Triton's interpreter on CPU
(`TRITON_INTERPRET=1`, set in conftest.py). Small tiles make several rounds out of a few hundred columns."""

import pytest
import torch

pytest.importorskip("triton")

from pipeline.coders.triton_topk import top_ids  # noqa: E402

SMALL = (4, 32)  # rows and columns one program reads


@pytest.mark.parametrize(
    ("shape", "k", "dtype"),
    [
        ((6, 300), 7, torch.bfloat16),  # k not a power of two; 300 columns: three rounds of 32-wide chunks
        ((2, 3, 100), 16, torch.float32),  # a stack of arms; a power of two
        ((5, 40), 40, torch.float32),  # k = N
        ((3, 200), 50, torch.float16),  # k above half a chunk: the chunks widen to keep each round halving
    ],
)
def test_the_rounds_select_what_torch_topk_does_largest_first(shape, k, dtype):
    torch.manual_seed(0)
    pre = torch.randn(shape).to(dtype)
    ids = top_ids(pre, k, SMALL)
    assert ids.shape == (*shape[:-1], k) and ids.dtype == torch.int64
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct latents per row
    torch.testing.assert_close(pre.gather(-1, ids), pre.topk(k, dim=-1).values, rtol=0, atol=0)


def test_nan_ranks_first_and_equal_values_go_to_the_larger_column():
    pre = torch.randn(4, 100)
    pre[0, 5] = float("nan")
    pre[1] = float("-inf")
    pre[1, 60] = 1.0
    pre[2] = 0.0
    pre[2, 3] = -0.0  # below +0.0
    pre[3] = -torch.arange(100.0)  # all negative: the order of magnitudes reverses
    ids = top_ids(pre, 4, SMALL)
    assert ids[0, 0] == 5 and torch.equal(pre[0].gather(-1, ids[0, 1:]), pre[0].topk(4).values[1:])
    assert ids[1].tolist() == [60, 99, 98, 97]
    assert ids[2].tolist() == [99, 98, 97, 96]
    assert ids[3].tolist() == [0, 1, 2, 3]
