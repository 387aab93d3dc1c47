"""SAELens's own trainer on the recipe benchmark's rows (`python -m pipeline.bench.recipes --kinds saelens-standard`).

SAELens 6.54's standard SAE is Anthropic's April 2024 recipe, the one `relu` follows: the L1 penalty
weighted by decoder norms, decoder columns of norm 0.1 at initialisation with the encoder their
transpose, no resampling. `saelens_standard` trains it with SAELens's `SAETrainer` (its Adam, its
clipping at 1, its penalty warm-up and linear decay of the rate to 0) over the same batches as the
pipeline's arms, in the same order, with the same fractions of warm-up and decay as `train`, then
scores it on the same held-out rows with the benchmark's figures (its decoder given back for the
benchmark's ground-truth recovery). The rows come already scaled to
E||x||^2 = d, so SAELens's own normalisation is off. SAELens is imported inside the function, so the
package does not depend on it.
"""

import contextlib
import io

import torch

from pipeline.config import TrainConfig


def saelens_standard(data, cfg: TrainConfig, n_features: int, l1: float) -> dict:
    """The benchmark's figures (ev, l0, dead) of SAELens's standard SAE with L1 coefficient `l1`, and its [d, N]
    decoder."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    n_steps = cfg.tokens // cfg.batch_size
    torch.manual_seed(cfg.seed)
    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=data.d, d_sae=n_features, l1_coefficient=l1, l1_warm_up_steps=round(cfg.lambda_warmup_frac * n_steps)
        )
    )
    trainer = SAETrainer(
        # lr_end = lr: SAELens's constant schedule then decays linearly from the full rate to 0.
        SAETrainerConfig(
            total_training_samples=n_steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
            lr_end=cfg.lr, lr_decay_steps=round(cfg.lr_decay_frac * n_steps), device=str(data.device),
        ),
        sae,
        iter(data.batches(cfg.batch_size, n_steps, cfg.seed)),
    )  # fmt: skip
    with contextlib.redirect_stderr(io.StringIO()):  # SAELens's progress bar, not the benchmark's table
        trainer.fit()
    dead = trainer.n_forward_passes_since_fired > cfg.dead_window_tokens // cfg.batch_size
    with torch.no_grad():
        x = data.eval.to(data.device)
        f = sae.encode(x)
        err = (x - sae.decode(f)).pow(2).sum()
        variance = (x - x.mean(0)).pow(2).sum()
    return {
        "lambda": l1, "ev": float(1 - err / variance), "l0": float((f > 0).sum(-1).float().mean()),
        "dead": float(dead.float().mean()), "decoder": sae.W_dec.detach().T.cpu(),
    }  # fmt: skip
