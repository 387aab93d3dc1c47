import pytest
import torch

from pipeline.harvest.coordinator import FAULT_ENV
from pipeline.harvest.stage import run_harvest, store_path, validate
from pipeline.harvest.worker import HarvestWorker
from pipeline.store.activation_store import ActivationStore
from pipeline.errors import ConfigError

from conftest import compose, tiny_overrides

pytestmark = pytest.mark.ray


def _reference(cfg, tmp_path) -> torch.Tensor:
    """The same store written by one worker in this process, without Ray."""
    from pipeline.text.contexts import build_contexts
    from pipeline.text.corpus import documents
    from pipeline.models.loading import load_tokenizer

    attrs = validate(cfg)
    ref = ActivationStore.create(tmp_path / "ref.zarr", attrs, attrs["model"]["d_model"])
    ref.write_tokens(build_contexts(load_tokenizer(cfg.model), documents(cfg.data), ref.layout.n_contexts, cfg.data.context_len, "ref"))
    worker = HarvestWorker(str(ref.path), cfg.model, 3, cfg.harvest.batch_contexts, cfg.harvest.drop_bos)
    for shard in range(ref.layout.n_shards):
        worker.harvest(shard)
    return ref.read_rows("resid_post.1", 0, ref.layout.n_rows)


def _assert_complete_and_equal(store: ActivationStore, reference: torch.Tensor) -> None:
    assert store.complete and not store.incomplete_shards()
    assert all(store.verify_shard(k) for k in range(store.layout.n_shards))
    assert torch.equal(store.read_rows("resid_post.1", 0, store.layout.n_rows), reference)


def test_ray_harvest_equals_a_single_process_reference(ray_session, tiny_models, tmp_path):
    cfg = compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"harvest.replicas": 2}))
    store = run_harvest(cfg)
    assert store.layout.n_shards == 2 and store.layout.n_rows == 120
    assert store.attrs["model"]["d_model"] == 32 and store.attrs["hooks"] == ["resid_post.1"]
    assert store.attrs["norm_stats"]["resid_post.1"]["n_rows"] == 120
    _assert_complete_and_equal(store, _reference(cfg, tmp_path))


@pytest.mark.slow
def test_an_actor_killed_mid_shard_is_replaced_and_the_store_is_still_exact(ray_session, tiny_models, tmp_path, monkeypatch):
    cfg = compose(*tiny_overrides(tiny_models["llama"], tmp_path / "run", **{"harvest.replicas": 1}))
    monkeypatch.setenv(FAULT_ENV, "1")
    store = run_harvest(cfg)
    _assert_complete_and_equal(store, _reference(cfg, tmp_path))


@pytest.mark.slow
def test_rerunning_redoes_only_incomplete_shards(ray_session, tiny_models, tmp_path):
    cfg = compose(*tiny_overrides(tiny_models["neox"], tmp_path / "run"))
    store = run_harvest(cfg)
    kept = store.record(0)
    (store.path / "completion" / "shard-000001.json").unlink()
    store.group.attrs["complete"] = False
    store = run_harvest(cfg)
    assert store.record(0) == kept  # shard 0 was not rewritten
    assert store.record(1) is not None and store.complete


def test_an_existing_store_of_another_configuration_is_refused_before_any_work(ray_session, tiny_models, tmp_path):
    run_harvest(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run")))
    before = sorted(p.name for p in (store_path(compose(f"out_dir={tmp_path / 'run'}")) / "completion").iterdir())
    with pytest.raises(ConfigError, match="model.name"):
        validate(compose(*tiny_overrides(tiny_models["neox"], tmp_path / "run")))
    with pytest.raises(ConfigError, match="harvest.hooks"):
        validate(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"harvest.hooks": "[resid_post.0]"})))
    with pytest.raises(ConfigError, match="data.context_len"):
        validate(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"data.context_len": 12})))
    assert sorted(p.name for p in (tmp_path / "run" / "store.zarr" / "completion").iterdir()) == before
