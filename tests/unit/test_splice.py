import pytest
import torch

from pipeline.activations.arrays import CoderArrays
from pipeline.activations.loading import ActivationData
from pipeline.coders.registry import AnyCoderConfig, build
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.evaluate.splice import Splicer
from pipeline.store.activation_store import ActivationStore

from conftest import harvest_in_process

HOOKS = ("resid_pre.1", "resid_post.1", "mlp_out.1", "mlp_in.2")


@pytest.fixture(scope="module")
def gpt2_store(tiny_models, tmp_path_factory) -> ActivationStore:
    """The tiny GPT-2's activations at four sites, harvested in this process."""
    return harvest_in_process(tiny_models["gpt2"], tmp_path_factory.mktemp("splice"), list(HOOKS))


def _identity(d: int):
    """A ReLU coder that reconstructs exactly: features relu(x) and relu(-x)."""
    coder = build(AnyCoderConfig(n_features=2 * d, l1_coefficient=0.0), d)
    eye = torch.eye(d)
    with torch.no_grad():
        coder.w_enc.copy_(torch.cat([eye, -eye]))
        coder.w_dec.copy_(torch.cat([eye, -eye], dim=1))
    return coder


@pytest.mark.parametrize("hook", HOOKS)
def test_an_exact_reconstruction_changes_nothing_and_a_poor_one_does(gpt2_store, hook):
    data = ActivationData(gpt2_store, hook, TrainConfig(eval_tokens=30), torch.device("cpu"))
    splicer = Splicer(gpt2_store, n_contexts=4, device=torch.device("cpu"))
    arrays = CoderArrays((hook,))
    exact = splicer(_identity(32), arrays, data.scales)
    assert exact["delta_loss"] == pytest.approx(0.0, abs=1e-5) and exact["kl"] == pytest.approx(0.0, abs=1e-6)
    assert exact["spliced_loss"] == pytest.approx(exact["clean_loss"], abs=1e-5) and exact["clean_loss"] > 1.0
    torch.manual_seed(0)
    poor = splicer(build(AnyCoderConfig(n_features=8), 32), arrays, data.scales)
    assert poor["kl"] > 1e-4 and poor["delta_loss"] == pytest.approx(poor["spliced_loss"] - poor["clean_loss"])
    assert poor["ce_loss_score"] == pytest.approx(
        (poor["ablated_loss"] - poor["spliced_loss"]) / (poor["ablated_loss"] - poor["clean_loss"])
    )
    assert poor["kl_score"] == pytest.approx((poor["ablated_kl"] - poor["kl"]) / poor["ablated_kl"])
    assert exact["ce_loss_score"] == pytest.approx(1.0, abs=1e-4) and exact["kl_score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("hook", HOOKS)
def test_a_coder_that_outputs_zero_scores_zero_against_the_zero_ablation(gpt2_store, hook):
    data = ActivationData(gpt2_store, hook, TrainConfig(eval_tokens=30), torch.device("cpu"))
    splicer = Splicer(gpt2_store, n_contexts=4, device=torch.device("cpu"))
    zero = _identity(32)
    with torch.no_grad():
        zero.w_dec.zero_()
    scores = splicer(zero, CoderArrays((hook,)), data.scales)
    assert scores["spliced_loss"] == pytest.approx(scores["ablated_loss"], rel=1e-6)
    assert scores["kl"] == pytest.approx(scores["ablated_kl"], rel=1e-5) and scores["ablated_kl"] > 0
    assert scores["ce_loss_score"] == pytest.approx(0.0, abs=1e-4) and scores["kl_score"] == pytest.approx(
        0.0, abs=1e-4
    )


def test_the_splicer_refuses_tokens_that_differ_from_their_checksum(tiny_models, tmp_path):
    store = harvest_in_process(tiny_models["gpt2"], tmp_path, ["resid_post.1"])
    Splicer(store, n_contexts=4, device=torch.device("cpu"))
    # Shard 0's tokens: the splicer reads only the last shard's contexts, but checks all the tokens.
    with open(store.shard_file("tokens", 0), "r+b") as f:
        f.seek(8)
        byte = f.read(1)
        f.seek(8)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ConfigError) as refused:
        Splicer(store, n_contexts=4, device=torch.device("cpu"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        f"out_dir: the tokens of the store at {store.path} are corrupt (tokens differ from their checksum); "
        f"repair them with: pipeline harvest out_dir={tmp_path} "
    )
