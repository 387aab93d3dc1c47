"""Triton's decoder bags (`pipeline.coders.triton_bag`) against torch's embedding bag, run by Triton's interpreter
on CPU (`TRITON_INTERPRET=1`, set in conftest.py)."""

import pytest
import torch
from torch.nn import functional

pytest.importorskip("triton")

from pipeline.coders.triton_bag import BLOCK, bag_sum  # noqa: E402


def _both_ways(table, ids, starts, weights):
    """(sums, table gradient, weights' gradient) of Triton's bags and of torch's, for one random cotangent."""
    cotangent = torch.randn(len(starts), table.shape[1])
    results = []
    for bags in (bag_sum, lambda t, i, s, w: functional.embedding_bag(i, t, s, mode="sum", per_sample_weights=w)):
        table_, weights_ = table.clone().requires_grad_(), weights.clone().requires_grad_()
        out = bags(table_, ids, starts, weights_)
        out.backward(cotangent)
        results.append((out.detach(), table_.grad, weights_.grad))
    return results


def test_bags_of_any_size_give_torchs_sums_and_gradients():
    torch.manual_seed(0)
    rows, d = 30, BLOCK + 72  # two column blocks, the second one partial
    ids = torch.randint(0, rows, (50,))  # rows used many times, some never
    starts = torch.tensor([0, 0, 4, 4, 13, 20, 21, 38, 50])  # empty bags first, between and last
    triton_way, torch_way = _both_ways(torch.randn(rows, d), ids, starts, torch.randn(50))
    assert triton_way[0].shape == (9, d)
    assert not triton_way[0][[0, 2, 8]].any()
    assert not triton_way[1][torch.isin(torch.arange(rows), ids, invert=True)].any()
    for mine, theirs in zip(triton_way, torch_way):
        torch.testing.assert_close(mine, theirs)


def test_the_decoders_fixed_size_bags_give_torchs_sums_and_gradients():
    from pipeline.coders.topk_kernel import decoder_rows

    torch.manual_seed(1)
    n_features, d, rows, k = 64, 24, 16, 5
    ids = torch.randn(rows, n_features).topk(k, dim=-1).indices.flatten()
    starts = torch.arange(0, rows * k, k)
    table = decoder_rows(torch.randn(d, n_features))
    for mine, theirs in zip(*_both_ways(table, ids, starts, torch.randn(rows * k))):
        torch.testing.assert_close(mine, theirs)
