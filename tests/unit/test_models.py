import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.models.hooks import parse_hook, run_to_hooks
from pipeline.models.loading import check_context_len, describe, load_model

from conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_post_hook_equals_the_models_hidden_state(tiny_models, family):
    cfg = ModelConfig(name=str(tiny_models[family]))
    info = describe(cfg)
    assert (info.n_layers, info.d_model, info.has_lm_head) == (3, 32, family != "bert")
    model = load_model(cfg, torch.device("cpu"))
    ids = torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(0))
    points = [parse_hook("resid_post.1", 3)]
    captured = run_to_hooks(model, ids, points, 3)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding, so block 1's output is entry 2 (before any final norm).
    assert captured["resid_post.1"].shape == (2, 10, 32)
    torch.testing.assert_close(captured["resid_post.1"], hidden[2])
    before = run_to_hooks(model, ids, [parse_hook("resid_pre.1", 3)], 3)
    torch.testing.assert_close(before["resid_pre.1"], hidden[1])


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_mlp_input_and_output_hooks_capture_the_mlp(tiny_models, family):
    cfg = ModelConfig(name=str(tiny_models[family]))
    model = load_model(cfg, torch.device("cpu"))
    ids = torch.randint(1000, 2000, (1, 6), generator=torch.Generator().manual_seed(1))
    points = [parse_hook(h, 3) for h in ("mlp_in.0", "mlp_out.0", "resid_post.2")]
    captured = run_to_hooks(model, ids, points, 3)
    assert {k: tuple(v.shape) for k, v in captured.items()} == {h.name: (1, 6, 32) for h in points}
    mlp = next(m for name, m in model.named_modules() if name.endswith("0.mlp"))
    with torch.no_grad():
        torch.testing.assert_close(mlp(captured["mlp_in.0"]), captured["mlp_out.0"])


def test_hook_names_and_layers_are_checked():
    with pytest.raises(ConfigError, match="layer 6 .* 6 layers"):
        parse_hook("resid_post.6", 6)
    with pytest.raises(ConfigError, match="harvest.hooks"):
        parse_hook("attn.2", 6)


def test_an_unknown_model_is_refused_with_the_field_named(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        describe(ModelConfig(name=str(tmp_path / "no-such-model")))


def test_the_embedded_model_loads_offline():
    info = describe(ModelConfig())
    assert (info.n_layers, info.d_model, info.has_lm_head, info.max_positions) == (6, 384, False, 512)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_context_longer_than_the_model_accepts_is_refused(tiny_models, family):
    info = describe(ModelConfig(name=str(tiny_models[family])))
    assert info.max_positions == 64
    check_context_len(info, 64)
    with pytest.raises(
        ConfigError, match=f"data.context_len: {tiny_models[family]} accepts at most 64 positions, got 65"
    ):
        check_context_len(info, 65)
