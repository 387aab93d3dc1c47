"""circuit-tracer's replacement model of a converted model (`lens.Lens`) and a dictionary, and its spliced forward.

The replacement model runs the original model (circuit-tracer only adds hooks for attribution). The
spliced forward replaces the MLP output of each layer the dictionary covers with its prediction, read
from the MLP inputs of the spliced pass itself (a CLT's layer-L output sums the decoders of the
features of every layer up to L). Position 0, the BOS token circuit-tracer prepends, keeps the
model's own MLP output, as attribution leaves it out (its features are zeroed there) and the
pipeline's stores drop it.
"""

import tempfile
from pathlib import Path

import torch

from pipeline.circuits.lens import Lens
from pipeline.circuits.transcoders import Member, load_folder, write_folder


def replacement_model(lens: Lens, transcoders):
    """circuit-tracer's TransformerLens replacement model with `lens`'s weights and the dictionary `transcoders`.

    The weights are loaded before the transcoders are put in, as circuit-tracer's own
    `from_pretrained_and_transcoders` does (after, the MLPs and the unembedding are wrapped and renamed)."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel

    model = TransformerLensReplacementModel(lens.config, tokenizer=lens.tokenizer)
    model.load_and_process_state_dict(
        dict(lens.state_dict), fold_ln=False, center_writing_weights=False, center_unembed=False
    )
    model._configure_replacement_model(transcoders)
    return model.eval()


def dictionary_model(lens: Lens, members: list[Member], scan: str, device: torch.device):
    """The replacement model of the dictionary `members`, written in circuit-tracer's format in a temporary folder
    and read back, whole, with circuit-tracer's loaders."""
    config = lens.config
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dictionary"
        write_folder(members, folder)
        transcoders = load_folder(folder, config.n_layers, scan, device, config.dtype)
    return replacement_model(lens, transcoders)


def active_features(model, token_ids: torch.Tensor) -> int:
    """How many (position, feature) pairs of the dictionary fire on the prompt, its BOS left out as in attribution."""
    _, activations = model.get_activations(token_ids, sparse=True)
    return int(activations.values().count_nonzero())


def tokens(model, prompt: str) -> torch.Tensor:
    """The prompt's token ids as circuit-tracer attributes it: with a special token (BOS) in front."""
    return model.ensure_tokenized(prompt)


def _prediction(transcoders, inputs: dict[int, torch.Tensor], layer: int) -> torch.Tensor:
    """The dictionary's MLP output at `layer` from the MLP inputs of the layers up to it."""
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    if not isinstance(transcoders, CrossLayerTranscoder):
        return transcoders[layer](inputs[layer])
    out = transcoders.b_dec[layer].expand_as(inputs[layer]).clone()
    for source in range(layer + 1):
        features = transcoders.encode_layer(inputs[source], source)
        out = out + features @ transcoders.W_dec[source][:, layer - source]
    return out


@torch.no_grad()
def spliced_logits(model, token_ids: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """[positions, vocab] logits with the dictionary's predictions in place of the MLP outputs of `layers`."""
    inputs: dict[int, torch.Tensor] = {}

    def keep(acts, hook, layer):
        inputs[layer] = acts
        return acts

    def replace(acts, hook, layer):
        predicted = _prediction(model.transcoders, inputs, layer).to(acts.dtype)
        predicted[:, 0] = acts[:, 0]
        return predicted

    hooks = []
    for layer in range(max(layers) + 1):
        hooks.append((f"blocks.{layer}.mlp.hook_in", lambda a, hook, layer=layer: keep(a, hook, layer)))
        if layer in layers:
            hooks.append((f"blocks.{layer}.mlp.hook_out", lambda a, hook, layer=layer: replace(a, hook, layer)))
    return model.run_with_hooks(token_ids[None], fwd_hooks=hooks)[0]


@torch.no_grad()
def clean_logits(model, token_ids: torch.Tensor) -> torch.Tensor:
    return model(token_ids[None])[0]
