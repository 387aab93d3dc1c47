"""The TransformerLens hook the export names for each of the pipeline's hook points holds the activations the
pipeline captures there, in a causal LM (tiny GPT-2) and in a post-LN encoder (tiny BERT)."""

import torch

from pipeline.export import hooks
from pipeline.models.hooks import parse_hook, run_to_hooks

from unit.test_export_splice import hooked_sae_transformer

GPT2_HOOKS = ["resid_pre.1", "resid_post.1", "mlp_out.2", "resid_post.2"]  # mlp_in has no plain TransformerLens hook
BERT_HOOKS = ["resid_pre.1", "resid_post.0", "resid_post.2"]


def _tiny_bert():
    """A tiny BERT, as transformers runs it and as TransformerLens's HookedEncoder does, with the same weights."""
    import transformers as tf
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights

    torch.manual_seed(0)
    c = tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    hf = tf.BertForPreTraining(c).eval()
    cfg = HookedTransformerConfig(
        d_model=32, d_head=16, n_heads=2, d_mlp=64, n_layers=3, n_ctx=512, d_vocab=100, act_fn="gelu",
        normalization_type="LN", attention_dir="bidirectional", original_architecture="BertForMaskedLM",
        eps=c.layer_norm_eps, device="cpu",
    )  # fmt: skip
    encoder = HookedEncoder(cfg)
    encoder.load_state_dict(convert_bert_weights(hf, cfg), strict=False)
    return hf.bert, encoder.eval()


def _compare(hf_model, tl_model, names: list[str], has_lm_head: bool) -> None:
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = run_to_hooks(hf_model, ids, [parse_hook(name, 3) for name in names], 3)
    with torch.no_grad():
        _, cache = tl_model.run_with_cache(ids)
    for name in names:
        tl_name = hooks.transformer_lens(name, {"has_lm_head": has_lm_head})
        torch.testing.assert_close(cache[tl_name], ours[name], atol=1e-5, rtol=1e-5)


def test_a_causal_lms_hooks_are_transformer_lens_hooks_of_the_same_activations(tiny_models):
    import transformers as tf

    hf = tf.GPT2LMHeadModel.from_pretrained(tiny_models["gpt2"]).eval()
    _compare(hf, hooked_sae_transformer(tiny_models["gpt2"]), GPT2_HOOKS, has_lm_head=True)


def test_an_encoders_block_output_is_its_normalised_residual_in_transformer_lens():
    hf, encoder = _tiny_bert()
    _compare(hf, encoder, BERT_HOOKS, has_lm_head=False)
