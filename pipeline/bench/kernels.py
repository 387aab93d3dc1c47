"""The sparse kinds' kernel choices, each timed against its alternative in the same run.

    python -m pipeline.bench.kernels [--steps 30]

Six choices of `topk` and `batchtopk` were made on CPU and are untimed on a GPU; this part times each
kernel chosen on this device and the others on the first TopK case's shape (N 32768, batch 4096, d 768 on
a GPU; N 8192, batch 1024, d 128 on CPU), so one GPU run says which to keep:

- the selection over the whole batch (`batchtopk.batch_top`): in two rounds (chosen on a GPU), above a
  threshold guessed from a sample (chosen on CPU; it reads a count on the host), or one `torch.topk`;
- W_enc's gradient through the selected entries, as one dense product (`topk_kernel.dense_encoder_gradient`,
  chosen on a GPU) against the sum over the entries (`sparse_encoder_gradient`, chosen on CPU);
- the AuxK selection of each row's top dead latents, over all N at a fixed size (`topk.dead_top`, chosen on a
  GPU) or among the dead latents' columns alone (`dead_top_among_columns`, chosen on CPU; it reads their count);
- the embedding bag of the decoder, forward and backward, over one contiguous copy of its columns
  (`topk_kernel.decoder_rows`) against over W_dec's strided columns in place;
- on a GPU with Triton, the decoder's bags as Triton's kernels (`triton_bag.bag_sum`, chosen there) against
  torch's embedding bag, both over the contiguous copy;
- on a GPU with Triton, TopK's selection of each row's k latents (`topk_kernel.row_top`) as Triton's rounds
  over chunks of the rows (`triton_topk.top_ids`, chosen there, in two tiles) against `torch.topk`.
"""

import argparse
from functools import partial

import torch
from torch import nn

from pipeline.bench.options import at_least_one
from pipeline.bench.timing import CUDA, DEVICE, D, K, failure, timed
from pipeline.coders.batchtopk import top_above_sampled_threshold, top_in_two_rounds
from pipeline.coders.topk import dead_top, dead_top_among_columns
from pipeline.coders.topk_kernel import (
    TRITON,
    decoder_rows,
    dense_encoder_gradient,
    row_major,
    sparse_encoder_gradient,
)

N_FEATURES, BATCH = (32768, 4096) if CUDA else (8192, 1024)
PRODUCTS = torch.bfloat16 if CUDA else torch.float32  # the dtype of the pre-activations a training step selects on
AUX_K, DEAD_SHARE = 512, 0.05  # the AuxK selection of TopK's default aux_k, with a twentieth of the latents dead


def kernel_rows(steps: int) -> list[dict]:
    """Per choice, milliseconds of each way (median of `steps` calls), the chosen one first."""
    torch.manual_seed(0)
    pre = torch.randn(BATCH, N_FEATURES, device=DEVICE, dtype=PRODUCTS)
    flat = row_major(pre.topk(K, dim=-1, sorted=False).indices, N_FEATURES)
    grad = torch.randn(flat.shape, device=DEVICE)
    centred = torch.randn(BATCH, D, device=DEVICE, dtype=PRODUCTS)
    w_dec = torch.randn(D, N_FEATURES, device=DEVICE, requires_grad=True)
    ids, weights = flat.view(BATCH, K) % N_FEATURES, grad.view(BATCH, K).clone().requires_grad_()
    selections = [
        ("two rounds", lambda: top_in_two_rounds(pre, K * BATCH)),
        ("sampled threshold", lambda: top_above_sampled_threshold(pre, K * BATCH)),
        ("one round", lambda: pre.flatten().topk(K * BATCH, sorted=False).indices.sort()),
    ]
    gradients = [
        ("dense product", lambda: dense_encoder_gradient(grad, flat, centred, N_FEATURES)),
        ("sum over entries", lambda: sparse_encoder_gradient(grad, flat, centred, N_FEATURES)),
    ]
    dead = torch.rand(N_FEATURES, device=DEVICE) < DEAD_SHARE
    auxk = [
        ("fixed size", lambda: dead_top(pre, dead, AUX_K)),
        ("dead columns", lambda: dead_top_among_columns(pre, dead, AUX_K)),
    ]
    if not CUDA:  # the chosen one first
        selections.insert(0, selections.pop(1))
        gradients.reverse()
        auxk.reverse()

    def embedding_bag(table):
        return nn.functional.embedding_bag(ids, table, per_sample_weights=weights, mode="sum")

    def bag(columns, bags=embedding_bag):
        def step():
            bags(columns()).sum().backward()
            w_dec.grad = weights.grad = None

        return step

    choices = [
        ("batchtopk selection over the batch", selections),
        ("W_enc gradient through the selection", gradients),
        (f"AuxK selection, {DEAD_SHARE:.0%} of the latents dead", auxk),
        (
            "decoder embedding bag, forward and backward",
            [("contiguous copy", bag(lambda: decoder_rows(w_dec))), ("strided columns", bag(lambda: w_dec.mT))],
        ),
    ]
    if CUDA and TRITON:
        choices.append(("decoder bags, forward and backward", lambda: triton_against_torch(ids, weights, w_dec, bag)))
        choices.append((f"TopK's selection of each row's {K}", lambda: row_tops_against_torch(pre, K)))
    rows = []
    for what, ways in choices:
        row = {"what": what, "n_features": N_FEATURES, "batch": BATCH}
        try:
            ways = ways() if callable(ways) else ways
            row |= {"chosen": ways[0][0], "ms": {name: timed(run, steps) * 1e3 for name, run in ways}}
            print(f"{what}: " + ", ".join(f"{name} {t:.3g} ms" for name, t in row["ms"].items()), flush=True)
        except Exception as error:  # noqa: BLE001
            row["failed"] = failure(error)
            print(f"{what}: {row['failed']}", flush=True)
        rows.append(row)
    return rows


def triton_against_torch(ids, weights, w_dec, bag) -> list:
    """Triton's bags (chosen on a GPU) and torch's embedding bag over the decoder's contiguous copy, after
    checking on this GPU that both give the same sums and gradients (the tests check Triton's interpreter)."""
    from pipeline.coders.triton_bag import bag_sum

    starts = torch.arange(0, ids.numel(), ids.shape[-1], device=ids.device)
    ways = {
        "triton": lambda table: bag_sum(table, ids.flatten(), starts, weights.flatten()),
        "embedding bag": lambda table: nn.functional.embedding_bag(ids, table, per_sample_weights=weights, mode="sum"),
    }
    cotangent = torch.randn(ids.shape[0], w_dec.shape[0], device=ids.device)
    results = []
    for bags in ways.values():
        out = bags(decoder_rows(w_dec))
        out.backward(cotangent)
        results.append((out.detach(), w_dec.grad, weights.grad))
        w_dec.grad = weights.grad = None
    for name, mine, theirs in zip(("sums", "W_dec gradient", "weights' gradient"), *results):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"triton {name}: {m}")
    return [(name, bag(lambda: decoder_rows(w_dec), bags)) for name, bags in ways.items()]


def row_tops_against_torch(pre: torch.Tensor, k: int) -> list:
    """Triton's rounds over chunks of each row, four rows a program (chosen on a GPU) and one, and `torch.topk`,
    after checking on this device that each selects the values `torch.topk` does."""
    from pipeline.coders.triton_topk import CHUNK, ROWS, top_ids

    tiles = [(ROWS, CHUNK), (1, CHUNK)]
    ways = {f"triton {rows} x {chunk}": partial(top_ids, pre, k, (rows, chunk)) for rows, chunk in tiles}
    largest = pre.topk(k, dim=-1).values
    for name, select in ways.items():
        torch.testing.assert_close(pre.gather(-1, select()), largest, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    return [*ways.items(), ("torch.topk", lambda: pre.topk(k, dim=-1, sorted=False))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=at_least_one, default=30, help="timed calls per kernel (median reported)")
    kernel_rows(parser.parse_args().steps)


if __name__ == "__main__":
    main()
