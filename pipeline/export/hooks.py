"""The pipeline's hook points (`resid_post.L`, `mlp_in.L`, ...) as each library names the same activations.

TransformerLens (SAELens) names them per block. A model without a language-model head is a BERT-style
encoder, which TransformerLens runs as a HookedEncoder: its blocks normalise after the residual sum
(post-LN), so their output, the pipeline's `resid_post.L`, is `blocks.L.hook_normalized_resid_post`.
The MLP's own input (after the block's second layer norm) has no hook in a plain HookedTransformer;
`blocks.L.mlp.hook_in` is the name circuit-tracer's replacement model gives it. circuit-tracer names a
transcoder's input and output relative to a block. In TransformerLens the activations equal the
pipeline's (read from the transformers model) only when the model is loaded without folding or
centring its weights (`HookedTransformer.from_pretrained_no_processing`).
"""

_TRANSFORMER_LENS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_post": "blocks.{}.hook_resid_post",
    "mlp_in": "blocks.{}.mlp.hook_in",
    "mlp_out": "blocks.{}.hook_mlp_out",
}


def split(name: str) -> tuple[str, int]:
    """(`site`, layer) of a hook name `site.L`."""
    site, _, layer = name.rpartition(".")
    return site, int(layer)


def transformer_lens(name: str, model: dict) -> str:
    """The TransformerLens hook of the pipeline's hook `name` in `model` (a source's), e.g. resid_post.3 ->
    blocks.3.hook_resid_post."""
    site, layer = split(name)
    if site == "resid_post" and not model["has_lm_head"]:
        return f"blocks.{layer}.hook_normalized_resid_post"
    return _TRANSFORMER_LENS[site].format(layer)
