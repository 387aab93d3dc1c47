import pytest
import torch

from pipeline.coders.registry import build
from pipeline.config import CoderConfig, TrainConfig
from pipeline.data.contexts import build_contexts
from pipeline.data.corpus import documents
from pipeline.harvest.stage import validate
from pipeline.harvest.worker import HarvestWorker
from pipeline.models.loading import load_tokenizer
from pipeline.store.activation_store import ActivationStore
from pipeline.train.data import ActivationData
from pipeline.train.splice import Splicer

from conftest import compose, tiny_overrides

HOOKS = ("resid_pre.1", "resid_post.1", "mlp_out.1", "mlp_in.2")


@pytest.fixture(scope="module")
def gpt2_store(tiny_models, tmp_path_factory) -> ActivationStore:
    """The tiny GPT-2's activations at three sites, harvested in this process."""
    out = tmp_path_factory.mktemp("splice")
    cfg = compose(*tiny_overrides(tiny_models["gpt2"], out, **{"harvest.hooks": f"[{','.join(HOOKS)}]"}))
    attrs = validate(cfg)
    store = ActivationStore.create(out / "store.zarr", attrs, attrs["model"]["d_model"])
    store.write_tokens(build_contexts(load_tokenizer(cfg.model), documents(cfg.data), store.layout.n_contexts, 16, "t"))
    worker = HarvestWorker(str(store.path), cfg.model, 3, 4, True)
    for shard in range(store.layout.n_shards):
        worker.harvest(shard)
    store.finalize()
    return store


def _identity(d: int):
    """A ReLU coder that reconstructs exactly: features relu(x) and relu(-x)."""
    coder = build(CoderConfig(n_features=2 * d, l1_coefficient=0.0), d)
    eye = torch.eye(d)
    with torch.no_grad():
        coder.w_enc.copy_(torch.cat([eye, -eye]))
        coder.w_dec.copy_(torch.cat([eye, -eye], dim=1))
    return coder


@pytest.mark.parametrize("hook", HOOKS)
def test_an_exact_reconstruction_changes_nothing_and_a_poor_one_does(gpt2_store, hook):
    data = ActivationData(gpt2_store, hook, TrainConfig(eval_tokens=30), torch.device("cpu"))
    splicer = Splicer(gpt2_store, hook, n_contexts=4, device=torch.device("cpu"))
    exact = splicer(_identity(32), data.scale)
    assert exact["delta_loss"] == pytest.approx(0.0, abs=1e-5) and exact["kl"] == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    poor = splicer(build(CoderConfig(n_features=8), 32), data.scale)
    assert poor["kl"] > 1e-4
