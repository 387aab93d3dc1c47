"""An exported SAE spliced into the model through SAELens (a TransformerLens model built in-process from the tiny
GPT-2's weights) changes the next-token loss exactly as the pipeline's own splicing of the coder does."""

import pytest
import torch

from pipeline.activations.arrays import CoderArrays, provenance, store_source
from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import TrainConfig
from pipeline.evaluate.splice import Splicer
from pipeline.export.runs import Run

from conftest import harvest_in_process
from unit.test_export_formats import _perturbed, _written

HOOK = "resid_post.1"


@pytest.fixture(scope="module")
def gpt2_store(tiny_models, tmp_path_factory):
    # Every position, BOS included, so SAELens's plain splice (which replaces them all) is the pipeline's.
    return harvest_in_process(
        tiny_models["gpt2"], tmp_path_factory.mktemp("export"), [HOOK], **{"harvest.drop_bos": False}
    )


def hooked_sae_transformer(model_dir):
    """The tiny GPT-2 as SAELens's HookedSAETransformer: its weights unfolded and uncentred, as the export says."""
    import transformers as tf
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    hf = tf.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, n_layers=c.n_layer,
        n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size, act_fn=c.activation_function,
        normalization_type="LN", positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        device="cpu",
    )  # fmt: skip
    model = HookedSAETransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    return model.eval()


def _loss_and_kl(clean: torch.Tensor, spliced: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    clean_lp, spliced_lp = clean[:, :-1].log_softmax(-1), spliced[:, :-1].log_softmax(-1)
    nll = -spliced_lp.gather(-1, ids[:, 1:, None]).mean().item()
    kl = torch.nn.functional.kl_div(spliced_lp, clean_lp, log_target=True, reduction="none").sum(-1).mean().item()
    return nll, kl


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_saelens_splicing_of_the_export_matches_the_pipelines_splicing(gpt2_store, tiny_models, kind, tmp_path):
    from sae_lens import SAE

    data = ActivationData(gpt2_store, HOOK, TrainConfig(eval_tokens=30), torch.device("cpu"))
    torch.manual_seed(0)
    coder = _perturbed(build(AnyCoderConfig(kind=kind, n_features=64, k=8), 32))
    arrays = CoderArrays((HOOK,))
    splicer = Splicer(gpt2_store, n_contexts=4, device=torch.device("cpu"))
    ours = splicer(coder, arrays, data.scales)
    run = Run(tmp_path / "run", coder, provenance(store_source(gpt2_store), arrays, data.scales), {}, None)
    sae = SAE.load_from_disk(_written(run, "saelens", tmp_path))
    model = hooked_sae_transformer(tiny_models["gpt2"])
    with torch.no_grad():
        clean = model(splicer.tokens)
        spliced = model.run_with_saes(splicer.tokens, saes=[sae])
    loss, kl = _loss_and_kl(clean.float(), spliced.float(), splicer.tokens)
    assert ours["kl"] > 1e-3  # the coder is far from exact, so the comparison has something to compare
    assert loss == pytest.approx(ours["spliced_loss"], abs=1e-4) and kl == pytest.approx(ours["kl"], abs=1e-4)
