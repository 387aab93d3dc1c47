"""Faults injected from outside into a harvest and its store: a harvest SIGKILLed while it creates the store,
and a shard corrupted on disk after the harvest."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from pipeline.cli import main
from pipeline.harvest.stage import run_harvest, validate
from pipeline.layout import OutDir

from conftest import compose, store_state, tiny_overrides

pytestmark = pytest.mark.ray


def _kill_when(overrides: list[str], appeared, timeout_s: float = 300) -> None:
    """Runs `pipeline harvest` in a new process and SIGKILLs it (and the processes it started) once `appeared()`."""
    command = [sys.executable, "-m", "pipeline", "harvest", *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while not appeared():
            if process.poll() is not None:
                pytest.fail(f"the harvest ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the harvest did not reach the point to kill it at")
            time.sleep(0.001)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()


def test_a_harvest_killed_while_it_creates_the_store_then_run_again_ends_as_an_uninterrupted_one(
    ray_session, tiny_models, tmp_path
):
    reference = run_harvest(compose(*tiny_overrides(tiny_models["gpt2"], tmp_path / "reference")))
    overrides = tiny_overrides(tiny_models["gpt2"], tmp_path / "run")
    store = OutDir(tmp_path / "run").store
    points = (
        lambda: any(store.parent.glob(".store.zarr.*.tmp")),  # the store's folder, still under its temporary name
        lambda: (store / "zarr.json").exists(),  # the store, renamed into place, before its tokens
        lambda: (store / "completion" / "tokens.json").exists(),  # the tokens, before any shard
    )
    for point in points:
        _kill_when(overrides, point)
    harvested = run_harvest(compose(*overrides))
    assert harvested.complete and not harvested.incomplete_shards()
    assert store_state(store) == store_state(reference.path)
    assert sorted(p.name for p in store.parent.iterdir()) == ["store.zarr"]  # no temporary folder left


def _flip(file, at: int = 100) -> None:
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_shard_is_reported_refused_by_training_and_rewritten_by_a_reharvest(
    ray_session, tiny_models, tmp_path, capsys
):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_models["gpt2"], out)
    store = run_harvest(compose(*overrides))
    intact = store_state(store.path)
    _flip(store.shard_file("acts/resid_post.1", 1))
    capsys.readouterr()

    assert main(["verify", f"out_dir={out}"]) == 2
    printed, error = capsys.readouterr()
    assert "verify: shard 1 is corrupt (acts/resid_post.1 differs from its checksum)" in printed
    assert error.count("\n") == 1 and error.startswith(
        f"error: out_dir: 1 of 2 complete shards of {store.path} are corrupt; repair with: pipeline harvest"
    )
    train = ["coder.n_features=16", "train.tokens=320", "train.batch_size=16", "train.eval_tokens=40",
             "train.splice_contexts=0", "train.device=cpu", f"model.name={tiny_models['gpt2']}",
             "tracking.mode=disabled"]  # fmt: skip
    for cache in ("host", "none"):
        assert main(["train", f"out_dir={out}", *train, f"train.cache={cache}"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith(f"error: out_dir: shard 1 of the store at {store.path}")
        assert not list((out / "train").glob("*/metrics.json"))
    repair = shlex.split(error.split("repair it with: ", 1)[1])
    assert repair[:3] == ["pipeline", "harvest", f"out_dir={out}"]
    validate(compose(*repair[2:], "tracking.mode=disabled"))  # the command fits the store it repairs

    # A changed byte is found by the full check, a file cut short by the default (fast) one.
    store = run_harvest(compose(*overrides, "harvest.verify=full"))
    assert store_state(store.path) == intact
    file = store.shard_file("acts/resid_post.1", 0)
    file.write_bytes(file.read_bytes()[:-7])
    store = run_harvest(compose(*overrides))
    assert "harvest: shard 0 is corrupt (acts/resid_post.1 holds" in capsys.readouterr().out
    assert store_state(store.path) == intact
    assert main(["verify", f"out_dir={out}"]) == 0
