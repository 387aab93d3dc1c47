"""Splicing a coder into the model: the next-token loss, its change and the KL divergence from the clean model
when the coder's output replaces activations in the forward pass.

- An SAE's reconstruction replaces the activation it was trained on.
- A transcoder's prediction, from the MLP input the spliced model computes, replaces the MLP output.
- A CLT replaces the MLP output of every layer it spans: the replacement model of Circuit Tracing.
  Each layer's features are read from that layer's MLP input in the spliced forward pass (so they
  see the earlier layers' replaced outputs), and layer t's output sums the decoders of the
  features of every layer s <= t.

Every kind is spliced the same way, through its `Coder.encode_layer` and `Coder.decode_layer`.

Runs on the store's last contexts, whose activations are the held-out rows. Models without a
language-model head have no next-token loss, and are skipped. An exact coder changes nothing: both
the loss change and the KL are 0.

SAEBench's scores set the spliced model between the clean one (score 1) and one whose replaced
arrays are zero (score 0): ce_loss_score = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean) and
kl_score = (KL_ablated - KL_spliced) / KL_ablated (KL_clean is 0). The zero ablation replaces the
positions the coder replaces (not BOS when the store dropped it).
"""

import math
from collections.abc import Callable
from contextlib import ExitStack

import torch
import torch.nn.functional as F

from pipeline.activations.arrays import CoderArrays
from pipeline.coders.base import Coder
from pipeline.config import ModelConfig
from pipeline.models.hooks import find_blocks, first_input, is_input_site, module_of, parse_hook
from pipeline.models.loading import load_model
from pipeline.store.activation_store import ActivationStore
from pipeline.store.verify import read_tokens_checked

# Sees the activation at a hook point and returns its replacement, or None to leave it as it is.
Rewrite = Callable[[torch.Tensor], torch.Tensor | None]


class Splicer:
    def __init__(self, store: ActivationStore, n_contexts: int, device: torch.device):
        model_attrs = store.attrs["model"]
        cfg = ModelConfig(name=model_attrs["name"], revision=model_attrs["revision"], dtype=model_attrs["dtype"])
        self.model = load_model(cfg, device)
        self.n_layers = model_attrs["n_layers"]
        self.blocks = find_blocks(self.model, self.n_layers)
        self.drop_bos = store.attrs["layout"]["drop_bos"]
        n_contexts = min(n_contexts, store.layout.n_contexts)
        first = store.layout.n_contexts - n_contexts
        self.tokens = torch.from_numpy(read_tokens_checked(store, first, store.layout.n_contexts)).long().to(device)

    @torch.no_grad()
    def __call__(self, coder: Coder, arrays: CoderArrays, scales: dict[str, float], batch_contexts: int = 8) -> dict:
        """Per next-token prediction: "delta_loss", "kl" (spliced from clean), "clean_loss" and "spliced_loss";
        the zero-ablated "ablated_loss" and "ablated_kl", and SAEBench's "ce_loss_score" and "kl_score".

        `arrays` says what the coder reads and predicts; `scales` maps each array to the factor that
        brought it to E||x||^2 = d for training.
        """
        sums = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0, "kl": 0.0, "ablated_kl": 0.0}
        count = 0
        for ids in self.tokens.split(batch_contexts):
            clean = self.model(input_ids=ids).logits.float()[:, :-1].log_softmax(-1)
            with self._spliced(coder, arrays, scales):
                spliced = self.model(input_ids=ids).logits.float()[:, :-1].log_softmax(-1)
            with self._ablated(arrays):
                ablated = self.model(input_ids=ids).logits.float()[:, :-1].log_softmax(-1)
            targets = ids[:, 1:]
            for name, log_probs in (("clean", clean), ("spliced", spliced), ("ablated", ablated)):
                sums[name] += _nll(log_probs, targets).sum().item()
            sums["kl"] += _kl(clean, spliced)
            sums["ablated_kl"] += _kl(clean, ablated)
            count += targets.numel()
        if not count:
            names = ("delta_loss", "kl", "clean_loss", "spliced_loss", "ablated_loss", "ablated_kl")
            return dict.fromkeys((*names, "ce_loss_score", "kl_score"), math.nan)
        mean = {name: total / count for name, total in sums.items()}
        return {
            "delta_loss": mean["spliced"] - mean["clean"],
            "kl": mean["kl"],
            "clean_loss": mean["clean"],
            "spliced_loss": mean["spliced"],
            "ablated_loss": mean["ablated"],
            "ablated_kl": mean["ablated_kl"],
            "ce_loss_score": _ratio(mean["ablated"] - mean["spliced"], mean["ablated"] - mean["clean"]),
            "kl_score": _ratio(mean["ablated_kl"] - mean["kl"], mean["ablated_kl"]),
        }

    def _ablated(self, arrays: CoderArrays) -> ExitStack:
        """The hooks that set every array the coder would replace to zero (the positions it replaces)."""
        stack = ExitStack()
        for target in arrays.targets or arrays.inputs:
            zero = self._hook(target, lambda value: self._keep_bos(torch.zeros_like(value), value))
            stack.callback(zero.remove)
        return stack

    def _spliced(self, coder: Coder, arrays: CoderArrays, scales: dict[str, float]) -> ExitStack:
        """The model's hooks that splice `coder` in for one forward pass, removed when the context exits."""
        stack = ExitStack()
        # Filled layer by layer as the forward pass reaches each input: layer -> its (scaled) input and features.
        # An SAE is one layer whose target is its input: both hooks sit on that array, reading before replacing.
        inputs: dict[int, torch.Tensor] = {}
        features: dict[int, torch.Tensor] = {}
        for layer, (source, target) in enumerate(zip(arrays.inputs, arrays.targets or arrays.inputs)):

            def read(value: torch.Tensor, layer=layer, source=source) -> None:
                inputs[layer] = value.float() * scales[source]
                features[layer] = coder.encode_layer(layer, inputs[layer])

            def predict(value: torch.Tensor, layer=layer, target=target) -> torch.Tensor:
                return self._keep_bos(coder.decode_layer(layer, features, inputs[layer]) / scales[target], value)

            stack.callback(self._hook(source, read).remove)
            stack.callback(self._hook(target, predict).remove)
        return stack

    def _keep_bos(self, replacement: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        replacement = replacement.to(value.dtype)
        if self.drop_bos:  # the coder never saw BOS positions; they keep their own activation
            replacement[:, 0] = value[:, 0]
        return replacement

    def _hook(self, name: str, rewrite: Rewrite):
        """Registers `rewrite` at hook point `name`; returns the handle."""
        point = parse_hook(name, self.n_layers)
        module = module_of(self.blocks[point.layer], point)
        if is_input_site(point):

            def pre_hook(_module, args, kwargs):
                new = rewrite(first_input(args, kwargs))
                if new is None:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(_module, _args, output):
            new = rewrite(output[0] if isinstance(output, tuple) else output)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return module.register_forward_hook(hook)


def _kl(clean: torch.Tensor, other: torch.Tensor) -> float:
    """The summed KL(clean || other) over positions, from log-probabilities."""
    return F.kl_div(other, clean, log_target=True, reduction="none").sum(-1).sum().item()


def _ratio(num: float, den: float) -> float:
    """num / den; NaN when den is 0 (the ablation changes nothing, so there is no range to recover)."""
    return num / den if den else math.nan


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
