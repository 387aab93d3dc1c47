"""The peers' training steps for `python -m pipeline.bench.train --peers`: EleutherAI's sparsify and SAELens.

Each builds the peer's coder of the benchmark's shape and returns a closure running one step as that
tool's own trainer does (its precision, clipping, optimiser and after-step); `peer` reports a peer that
is not installed or fails to build as a line of text instead of stopping the run. The peers are imported
only inside these functions, so the package does not depend on them.
"""

import os

import torch

from pipeline.bench.timing import CUDA, DEVICE, D, K, failure


def sparsify_step(kind: str, n_features: int, batch: int):
    """One step of sparsify's TopK SparseCoder as its trainer runs it (its own bf16 autocast, Adam, unit decoder)."""
    if kind != "topk":
        return None
    if not CUDA:  # sparsify's Triton decoder needs a GPU; its own switch, read as it is imported, picks its eager one
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D, SparseCoderConfig(num_latents=n_features, k=K), device=DEVICE)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, D, device=DEVICE)
    dead = torch.zeros(n_features, dtype=torch.bool, device=DEVICE)

    def step():
        out = sae(x, dead_mask=dead)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        sae.set_decoder_norm_to_unit_norm()

    return step


def saelens_step(kind: str, n_features: int, batch: int):
    """One step of SAELens' training SAE of the same kind as its trainer runs it (bf16 autocast, clipping, Adam)."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    common = {"d_in": D, "d_sae": n_features, "device": str(DEVICE)}
    sae, coefficients = {
        "relu": lambda: (StandardTrainingSAE(StandardTrainingSAEConfig(**common)), {"l1": 5.0}),
        "jumprelu": lambda: (JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common)), {"l0": 5.0}),
        "topk": lambda: (TopKTrainingSAE(TopKTrainingSAEConfig(k=K, **common)), {}),
        "batchtopk": lambda: (BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=K, **common)), {}),
    }[kind]()
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, D, device=DEVICE)

    step_input = TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=CUDA):
            out = sae.training_forward_pass(step_input=step_input)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def peer(make, kind: str, n_features: int, batch: int):
    """The peer's step, or why it cannot run here."""
    try:
        return make(kind, n_features, batch)
    except Exception as err:  # noqa: BLE001 - a peer that fails to build is reported, not fatal
        return failure(err)
