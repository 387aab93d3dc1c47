"""The sparse kinds' kernel choices, each timed against its alternative in the same run.

    python -m pipeline.bench.kernels [--steps 30]

Three choices of `topk` and `batchtopk` were made on CPU and are untimed on a GPU; this part times each
chosen kernel and the one it replaced on the first TopK case's shape (N 32768, batch 4096, d 768 on a GPU;
N 8192, batch 1024, d 128 on CPU), so one GPU run says which to keep:

- the selection over the whole batch (`batchtopk.batch_top`, two rounds) against one `torch.topk`;
- W_enc's gradient through the selected entries, as one dense product (`topk_kernel.dense_encoder_gradient`,
  chosen on a GPU) against the sum over the entries (`sparse_encoder_gradient`, chosen on CPU);
- the embedding bag of the decoder, forward and backward, over one contiguous copy of its columns
  (`topk_kernel.decoder_rows`) against over W_dec's strided columns in place.
"""

import argparse

import torch
from torch import nn

from pipeline.bench.options import at_least_one
from pipeline.bench.timing import CUDA, DEVICE, D, K, timed
from pipeline.coders.batchtopk import batch_top
from pipeline.coders.topk_kernel import decoder_rows, dense_encoder_gradient, row_major, sparse_encoder_gradient

N_FEATURES, BATCH = (32768, 4096) if CUDA else (8192, 1024)
PRODUCTS = torch.bfloat16 if CUDA else torch.float32  # the dtype of the pre-activations a training step selects on


def kernel_rows(steps: int) -> list[dict]:
    """Per choice, milliseconds of the chosen kernel and of its alternative (median of `steps` calls)."""
    torch.manual_seed(0)
    pre = torch.randn(BATCH, N_FEATURES, device=DEVICE, dtype=PRODUCTS)
    flat = row_major(pre.topk(K, dim=-1, sorted=False).indices, N_FEATURES)
    grad = torch.randn(flat.shape, device=DEVICE)
    centred = torch.randn(BATCH, D, device=DEVICE, dtype=PRODUCTS)
    w_dec = torch.randn(D, N_FEATURES, device=DEVICE, requires_grad=True)
    ids, weights = flat.view(BATCH, K) % N_FEATURES, grad.view(BATCH, K)
    gradients = [("dense product", dense_encoder_gradient), ("sum over entries", sparse_encoder_gradient)]
    if not CUDA:
        gradients.reverse()  # the chosen one first

    def bag(columns):
        def step():
            out = nn.functional.embedding_bag(ids, columns(), per_sample_weights=weights, mode="sum")
            out.sum().backward()
            w_dec.grad = None

        return step

    choices = [
        (
            "batchtopk selection over the batch",
            ("two rounds", lambda: batch_top(pre, K * BATCH)),
            ("one round", lambda: pre.flatten().topk(K * BATCH, sorted=False).indices.sort()),
        ),
        (
            "W_enc gradient through the selection",
            *((name, lambda fn=fn: fn(grad, flat, centred, N_FEATURES)) for name, fn in gradients),
        ),
        (
            "decoder embedding bag, forward and backward",
            ("contiguous copy", bag(lambda: decoder_rows(w_dec))),
            ("strided columns", bag(lambda: w_dec.mT)),
        ),
    ]
    rows = []
    for what, (chosen, run_chosen), (alternative, run_alternative) in choices:
        row = {
            "what": what,
            "n_features": N_FEATURES,
            "batch": BATCH,
            "chosen": chosen,
            "chosen_ms": timed(run_chosen, steps) * 1e3,
            "alternative": alternative,
            "alternative_ms": timed(run_alternative, steps) * 1e3,
        }
        rows.append(row)
        print(f"{what}: {chosen} {row['chosen_ms']:.3g} ms, {alternative} {row['alternative_ms']:.3g} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=at_least_one, default=30, help="timed calls per kernel (median reported)")
    kernel_rows(parser.parse_args().steps)


if __name__ == "__main__":
    main()
