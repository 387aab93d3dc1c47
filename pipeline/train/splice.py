"""Splicing a coder into the model: the change in next-token loss and the KL divergence when the
coder's reconstruction replaces the activation it was trained on.

Runs on the store's last contexts, whose activations are the held-out rows. Models without a
language-model head have no next-token loss, and are skipped.
"""

import math

import torch
import torch.nn.functional as F

from pipeline.coders.base import Coder
from pipeline.config import ModelConfig
from pipeline.models.hooks import find_blocks, first_input, is_input_site, module_of, parse_hook
from pipeline.models.loading import load_model
from pipeline.store.activation_store import ActivationStore


class Splicer:
    def __init__(self, store: ActivationStore, hook: str, n_contexts: int, device: torch.device):
        model_attrs = store.attrs["model"]
        cfg = ModelConfig(name=model_attrs["name"], revision=model_attrs["revision"], dtype=model_attrs["dtype"])
        self.model = load_model(cfg, device)
        self.point = parse_hook(hook, model_attrs["n_layers"])
        self.block = find_blocks(self.model, model_attrs["n_layers"])[self.point.layer]
        self.drop_bos = store.attrs["layout"]["drop_bos"]
        n_contexts = min(n_contexts, store.layout.n_contexts)
        self.tokens = torch.from_numpy(store.read_tokens(store.layout.n_contexts - n_contexts, store.layout.n_contexts)).long().to(device)

    @torch.no_grad()
    def __call__(self, coder: Coder, scale: float, batch_contexts: int = 8) -> dict:
        """{"delta_loss", "kl"} per token, averaged over the contexts' next-token predictions."""
        total_delta = total_kl = 0.0
        count = 0
        for ids in self.tokens.split(batch_contexts):
            clean = self.model(input_ids=ids).logits.float()
            with self._replaced_by(coder, scale):
                spliced = self.model(input_ids=ids).logits.float()
            targets = ids[:, 1:]
            clean_lp, spliced_lp = clean[:, :-1].log_softmax(-1), spliced[:, :-1].log_softmax(-1)
            total_delta += (_nll(spliced_lp, targets) - _nll(clean_lp, targets)).sum().item()
            total_kl += F.kl_div(spliced_lp, clean_lp, log_target=True, reduction="none").sum(-1).sum().item()
            count += targets.numel()
        return {"delta_loss": total_delta / count, "kl": total_kl / count} if count else {"delta_loss": math.nan, "kl": math.nan}

    def _replaced_by(self, coder: Coder, scale: float):
        module = module_of(self.block, self.point)
        drop_bos = self.drop_bos

        def reconstruct(value: torch.Tensor) -> torch.Tensor:
            x = value.float() * scale
            recon = (coder.decode(coder.encode(x)) / scale).to(value.dtype)
            if drop_bos:  # the coder never saw BOS positions; they keep their own activation
                recon[:, 0] = value[:, 0]
            return recon

        if is_input_site(self.point):
            def pre_hook(_module, args, kwargs):
                if args:
                    return (reconstruct(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": reconstruct(first_input(args, kwargs))}

            return _Hook(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

        def hook(_module, _args, output):
            if isinstance(output, tuple):
                return (reconstruct(output[0]), *output[1:])
            return reconstruct(output)

        return _Hook(module.register_forward_hook(hook))


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class _Hook:
    """A registered hook as a context manager that removes it on exit."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()
