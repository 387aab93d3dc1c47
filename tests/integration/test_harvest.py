import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.harvest.coordinator import PlacementError
from pipeline.harvest.stage import run_harvest, validate
from pipeline.harvest.worker import HarvestWorker
from pipeline.layout import OutDir
from pipeline.store.activation_store import ActivationStore
from pipeline.store.verify import data_damage

from conftest import compose, tiny_overrides

pytestmark = pytest.mark.ray


def _reference(cfg, tmp_path) -> torch.Tensor:
    """The same store written by one worker in this process, without Ray."""
    from pipeline.models.loading import load_tokenizer
    from pipeline.text.contexts import build_contexts
    from pipeline.text.corpus import documents

    attrs = validate(cfg)
    ref = ActivationStore.create(tmp_path / "ref.zarr", attrs, attrs["model"]["d_model"])
    ref.write_tokens(
        build_contexts(
            load_tokenizer(cfg.model), documents(cfg.data), ref.layout.n_contexts, cfg.data.context_len, "ref"
        )
    )
    worker = HarvestWorker(str(ref.path), cfg.model, 3, cfg.harvest.batch_contexts, cfg.harvest.drop_bos)
    for shard in range(ref.layout.n_shards):
        worker.harvest(shard)
    return ref.read_rows("resid_post.1", 0, ref.layout.n_rows)


def _assert_complete_and_equal(store: ActivationStore, reference: torch.Tensor) -> None:
    assert store.complete and not store.incomplete_shards()
    assert all(data_damage(store, k) is None for k in range(store.layout.n_shards))
    assert torch.equal(store.read_rows("resid_post.1", 0, store.layout.n_rows), reference)


def test_ray_harvest_equals_a_single_process_reference(ray_session, tiny_models, tmp_path):
    cfg = compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"harvest.replicas": 2}))
    store = run_harvest(cfg)
    assert store.layout.n_shards == 2 and store.layout.n_rows == 120
    assert store.attrs["model"]["d_model"] == 32 and store.attrs["hooks"] == ["resid_post.1"]
    assert store.attrs["norm_stats"]["resid_post.1"]["n_rows"] == 120
    _assert_complete_and_equal(store, _reference(cfg, tmp_path))


def _writer_pid(record: Path) -> int:
    return int(json.loads(record.read_text())["writer"].rsplit(":", 1)[1])


def _kill_the_first_writer(completion: Path, harvest: Future) -> int:
    """SIGKILLs the actor process that wrote the store's first shard, while the harvest goes on; returns its pid."""
    while not harvest.done():
        records = sorted(completion.glob("shard-*.json"))
        if records:
            pid = _writer_pid(records[0])
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.005)
    raise AssertionError(f"the harvest ended before a writer could be killed: {harvest.exception()}")


def test_an_actor_killed_mid_harvest_is_replaced_and_the_store_is_still_exact(ray_session, tiny_models, tmp_path):
    # 100 shards, so that the harvest is still writing when its actor is killed; the actor's leases go to a new one.
    cfg = compose(*tiny_overrides(tiny_models["llama"], tmp_path / "run", **{"harvest.n_tokens": 6000}))
    with ThreadPoolExecutor(1) as pool:
        harvest = pool.submit(run_harvest, cfg)
        killed = _kill_the_first_writer(OutDir(cfg.out_dir).store / "completion", harvest)
        store = harvest.result(timeout=600)
    writers = {_writer_pid(record) for record in (store.path / "completion").glob("shard-*.json")}
    # The killed actor may die after writing its shard's record but before reporting it: then that shard is
    # leased again and its record names the replacement, so only the other writers are counted.
    assert len(writers - {killed}) == 1  # its replacement wrote the rest
    _assert_complete_and_equal(store, _reference(cfg, tmp_path))


def _assert_all_cpus_freed(ray) -> None:
    """Every placement group was removed (Ray frees their CPUs a moment later)."""
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_a_cluster_with_no_spare_cpus_survives_an_actor_kill(ray_session, tiny_models, tmp_path):
    # The session's Ray has 2 CPUs, both held by the 2 replicas: the replacement can only take the dead one's.
    assert ray_session.cluster_resources()["CPU"] == 2
    extra = {
        "harvest.n_tokens": 6000,
        "harvest.replicas": 2,
        "harvest.cpus_per_replica": 1,
        "harvest.place_timeout_s": 60,
    }
    cfg = compose(*tiny_overrides(tiny_models["llama"], tmp_path / "run", **extra))
    with ThreadPoolExecutor(1) as pool:
        harvest = pool.submit(run_harvest, cfg)
        killed = _kill_the_first_writer(OutDir(cfg.out_dir).store / "completion", harvest)
        store = harvest.result(timeout=600)
    writers = {_writer_pid(record) for record in (store.path / "completion").glob("shard-*.json")}
    assert len(writers - {killed}) == 2  # the other replica and the replacement (see the test above)
    _assert_complete_and_equal(store, _reference(cfg, tmp_path))
    _assert_all_cpus_freed(ray_session)


def test_a_replica_larger_than_the_cluster_fails_within_the_timeout_naming_what_is_missing(
    ray_session, tiny_models, tmp_path
):
    extra = {"harvest.cpus_per_replica": 3, "harvest.place_timeout_s": 2}
    cfg = compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **extra))
    start = time.monotonic()
    with pytest.raises(PlacementError) as refused:
        run_harvest(cfg)
    assert time.monotonic() - start < 60  # the timeout, plus tokenizing and starting the harvest
    message = str(refused.value)
    assert "\n" not in message and message.startswith("harvest.place_timeout_s: a replica asking for CPU 3 ")
    assert "the cluster has CPU 2 in all" in message and "CPU 2 on its largest node" in message
    _assert_all_cpus_freed(ray_session)


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
    before = sorted(p.name for p in (OutDir(tmp_path / "run").store / "completion").iterdir())
    with pytest.raises(ConfigError, match="model.name"):
        validate(compose(*tiny_overrides(tiny_models["neox"], tmp_path / "run")))
    with pytest.raises(ConfigError, match="harvest.hooks"):
        validate(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"harvest.hooks": "[resid_post.0]"})))
    with pytest.raises(ConfigError, match="data.context_len"):
        validate(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **{"data.context_len": 12})))
    assert sorted(p.name for p in (tmp_path / "run" / "store.zarr" / "completion").iterdir()) == before
