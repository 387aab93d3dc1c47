"""Harvests and sweeps SIGKILLed at seeded random instants, several times over, then run again: they end as an
uninterrupted run of the same configuration does.

Each kill waits for a point drawn at random among those the run has still to reach (a stage of creating the
store, a number of shards or arms finished), then for a random fraction of a second more.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.harvest.stage import run_harvest
from pipeline.layout import OutDir

from conftest import compose, harvest_in_process, store_state, tiny_overrides

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SEED = 18
SHARDS = {"harvest.n_tokens": 2400}  # 40 shards of 4 contexts of 15 rows


def _wait_for(predicate, process: subprocess.Popen | None = None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the run did not reach the point to kill it at")
        time.sleep(0.001)


def _killed_at(command: list[str], reached, target: int, delay_s: float) -> None:
    """Runs `command` in a session of its own and SIGKILLs that session once `reached() >= target`, and
    `delay_s` later."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: reached() >= target, process)
        time.sleep(delay_s)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


def _harvest_reached(store: Path) -> int:
    """How far a harvest has come: 1 its store under a temporary name, 2 the store in place, 3 its tokens
    recorded, 3 + k with k shards recorded."""
    records = store / "completion"
    if (records / "tokens.json").exists():
        return 3 + len(list(records.glob("shard-*.json")))
    if (store / "zarr.json").exists():
        return 2
    return int(any(store.parent.glob(".store.zarr.*.tmp")))


def test_a_harvest_killed_at_random_instants_ends_with_the_store_of_an_uninterrupted_one(
    ray_session, tiny_models, tmp_path
):
    reference = harvest_in_process(tiny_models["gpt2"], tmp_path / "reference", ["resid_post.1"], **SHARDS)
    # The coordinator joins the session's Ray, so that each start costs no new instance; its actors die with it.
    address = ray_session.get_runtime_context().gcs_address
    overrides = tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **SHARDS, **{"ray.address": address})
    store = OutDir(tmp_path / "run").store
    rng = random.Random(SEED)
    command = [sys.executable, "-m", "pipeline", "harvest", *overrides]
    # The first kill lands while the store is created or tokenized, the others between and during shard writes.
    for kill in range(3):
        reached = _harvest_reached(store)
        target = rng.randint(1, 3) if kill == 0 else reached + rng.randint(1, 6)
        _killed_at(command, lambda: _harvest_reached(store), target, 0.0 if kill == 0 else rng.uniform(0, 0.05))
    assert _harvest_reached(store) < 3 + reference.layout.n_shards  # the kills left work to do

    harvested = run_harvest(compose(*overrides))
    assert harvested.complete and not harvested.incomplete_shards()
    # The same bytes in every file: no row lost, duplicated or moved, and the same records and statistics.
    assert store_state(store) == store_state(reference.path)
    assert sorted(p.name for p in store.parent.iterdir()) == ["store.zarr"]  # no temporary folder left


def _records(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / "completion").glob("shard-*.json"))]


def _writer_pid(record: dict) -> int:
    return int(record["writer"].rsplit(":", 1)[1])


def test_a_harvest_whose_actors_are_killed_at_random_instants_ends_with_the_store_of_an_uninterrupted_one(
    ray_session, tiny_models, tmp_path
):
    reference = harvest_in_process(tiny_models["gpt2"], tmp_path / "reference", ["resid_post.1"], **SHARDS)
    overrides = tiny_overrides(tiny_models["gpt2"], tmp_path / "run", **SHARDS, **{"harvest.max_actor_restarts": 3})
    store = OutDir(tmp_path / "run").store
    rng = random.Random(SEED)
    killed: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        harvest = pool.submit(run_harvest, compose(*overrides))
        for _ in range(3):
            # A record newer than the last kill, from a live actor: the actor writing now.
            target = len(_records(store)) + rng.randint(1, 5) if store.exists() else rng.randint(1, 5)

            def live_writer(target=target) -> int | None:
                records = _records(store) if (store / "completion").is_dir() else []
                live = [_writer_pid(r) for r in records if _writer_pid(r) not in killed]
                return live[-1] if len(records) >= target and live else None

            _wait_for(lambda: harvest.done() or live_writer() is not None)
            assert not harvest.done(), f"the harvest ended before its actor could be killed: {harvest.exception()}"
            time.sleep(rng.uniform(0, 0.05))
            pid = live_writer()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        harvested = harvest.result(timeout=600)
    assert len(set(killed)) == 3 and harvested.complete
    assert store_state(store) == store_state(reference.path)


def _sweep_reached(runs: Path) -> int:
    """How far a sweep has come: 2 per arm finished, and 1 more while an unfinished arm has a checkpoint."""
    finished = {p.parent for p in runs.glob("*/result.json")}
    midway = any(p.parent not in finished for p in runs.glob("*/checkpoint.safetensors"))
    return 2 * len(finished) + int(midway)


METRICS = ["run_id", "status", "steps", "tokens", "flops", "loss", "mse", "fvu", "l0", "dead_fraction", "attempts"]


@pytest.mark.cluster
def test_a_sweep_killed_at_random_instants_ends_with_one_done_row_per_arm_and_the_metrics_of_an_uninterrupted_one(
    synthetic_store, tmp_path
):
    import pandas as pd

    from pipeline.sweep.stage import run_sweep

    sweep = (
        tmp_path / "six.yaml"
    )  # 6 arms, one per job, each checkpointed on its way; the kills come soon after each milestone, as arms are quick
    spec = {"kind": "relu", "budgets": [3e8], "n_features": [32, 64], "lrs": [1e-3, 3e-3, 1e-2], "batch_size": 256}
    sweep.write_text(json.dumps(spec))
    settings = [f"sweep={sweep}", "model.name=synthetic", "tracking.mode=disabled", "sweep.pack=1",
                "train.eval_tokens=512", "train.checkpoint_every=10"]  # fmt: skip
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "store.zarr").symlink_to(synthetic_store.path)
    reference = run_sweep(compose(f"out_dir={tmp_path / 'reference'}", *settings))

    out = OutDir(tmp_path / "killed")
    command = [sys.executable, "-m", "pipeline", "sweep", f"out_dir={out.root}", *settings]
    rng = random.Random(SEED)
    for _ in range(3):
        target = _sweep_reached(out.sweep.runs) + rng.randint(1, 2)
        _killed_at(command, lambda: _sweep_reached(out.sweep.runs), target, rng.uniform(0, 0.1))
    assert _sweep_reached(out.sweep.runs) < 2 * len(reference)  # the kills left arms to train

    table = run_sweep(compose(f"out_dir={out.root}", *settings))
    assert len(table) == len(reference) == 6 and (table.status == "done").all() and table.run_id.is_unique
    assert len(pd.read_parquet(out.sweep.results)) == 6
    # Resumed arms continue from their checkpoints exactly: the same metrics to the bit.
    got, expected = (t[METRICS].sort_values("run_id").reset_index(drop=True) for t in (table, reference))
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
