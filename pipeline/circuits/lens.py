"""A transformers causal LM as a TransformerLens model: its HookedTransformerConfig and its state dict.

TransformerLens's own `from_pretrained` accepts only the names in its official list, and its conversion
of a local folder's config fails on small models (a GPT2Config saved by recent transformers has no
`n_ctx`; a path containing "llama" takes a hard-coded branch). So the config is built here from the
transformers config, per architecture, with the fields TransformerLens's `convert_hf_model_config` uses,
and the weights with TransformerLens's own converters. Loaded without folding or centring, its
`blocks.L.mlp.hook_in` and `hook_out` equal the pipeline's `mlp_in.L` and `mlp_out.L`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.loading import load_config, load_model, load_tokenizer, resolve_path

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _gpt2(hf) -> dict:
    return {
        "d_model": hf.n_embd, "d_head": hf.n_embd // hf.n_head, "n_heads": hf.n_head,
        "d_mlp": hf.n_inner or 4 * hf.n_embd, "n_layers": hf.n_layer, "n_ctx": hf.n_positions,
        "eps": hf.layer_norm_epsilon, "d_vocab": hf.vocab_size, "act_fn": hf.activation_function,
        "use_attn_scale": True, "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": hf.scale_attn_by_inverse_layer_idx, "normalization_type": "LN",
    }  # fmt: skip


def _llama(hf) -> dict:
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    grouped = hf.num_key_value_heads != hf.num_attention_heads  # TransformerLens uses GQA whenever this is set
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        "n_key_value_heads": hf.num_key_value_heads if grouped else None, "normalization_type": "RMS",
        "positional_embedding_type": "rotary", "rotary_adjacent_pairs": False, "rotary_dim": d_head,
        "rotary_base": _rope_theta(hf), "final_rms": True, "gated_mlp": True,
    }  # fmt: skip


def _neox(hf) -> dict:
    d_head = hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act, "use_attn_scale": True,
        "use_local_attn": False, "scale_attn_by_inverse_layer_idx": False,
        "parallel_attn_mlp": hf.use_parallel_residual, "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False, "rotary_dim": round(hf.rotary_pct * d_head), "rotary_base": _rope_theta(hf),
        "normalization_type": "LN", "default_prepend_bos": False,
    }  # fmt: skip


def _rope_theta(hf) -> float:
    """The rotary base, a top-level field or one of `rope_parameters` by transformers version."""
    theta = getattr(hf, "rope_theta", None) or (getattr(hf, "rope_parameters", None) or {}).get("rope_theta")
    return float(theta or 10_000.0)


def _weights(architecture: str) -> Callable:
    from transformer_lens.pretrained.weight_conversions import gpt2, llama, neox

    return {
        "GPT2LMHeadModel": gpt2.convert_gpt2_weights,
        "LlamaForCausalLM": llama.convert_llama_weights,
        "GPTNeoXForCausalLM": neox.convert_neox_weights,
    }[architecture]


_CONFIGS = {"GPT2LMHeadModel": _gpt2, "LlamaForCausalLM": _llama, "GPTNeoXForCausalLM": _neox}
SUPPORTED = tuple(_CONFIGS)


@dataclass
class Lens:
    """A model in TransformerLens's form, converted once: a replacement model is built from it per dictionary."""

    config: object  # HookedTransformerConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: object


def architecture(cfg: ModelConfig) -> str:
    """The model's architecture, or ConfigError when tracing cannot run it."""
    hf = load_config(cfg)
    names = hf.architectures or []
    if not any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        raise ConfigError(
            f"model.name: {cfg.name} has no language-model head ({', '.join(names) or 'no architecture'}); "
            "tracing attributes next-token logits, so it needs a causal LM"
        )
    supported = [name for name in names if name in _CONFIGS]
    if not supported:
        raise ConfigError(
            f"model.name: tracing converts {', '.join(SUPPORTED)} models to TransformerLens; "
            f"{cfg.name} is a {', '.join(names)}"
        )
    return supported[0]


def hooked_config(cfg: ModelConfig, device: torch.device):
    """The HookedTransformerConfig of `cfg`'s model, whose tokenizer loads from `cfg.tokenizer_name` offline."""
    from transformer_lens import HookedTransformerConfig

    name = architecture(cfg)
    fields = _CONFIGS[name](load_config(cfg))
    return HookedTransformerConfig(
        **fields, model_name=cfg.name, tokenizer_name=resolve_path(cfg), original_architecture=name,
        device=str(device), dtype=_DTYPES[cfg.dtype], init_weights=False,
    )  # fmt: skip


def convert(cfg: ModelConfig, device: torch.device) -> Lens:
    """`cfg`'s model converted to TransformerLens's config and weights, with its tokenizer."""
    config = hooked_config(cfg, device)
    hf_model = load_model(cfg, device)
    state_dict = _weights(config.original_architecture)(hf_model, config)
    return Lens(config, {k: v.detach() for k, v in state_dict.items()}, load_tokenizer(cfg))
