"""A `pipeline harvest` SIGKILLed mid-harvest leaves no process of the local Ray instance it started."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides

pytestmark = pytest.mark.cluster


def _session_dir(driver: int) -> str | None:
    """The session folder of the Ray instance `driver` started, from its GCS server's command line."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == driver:
            for arg in args:
                if arg.startswith(b"--session-dir="):
                    return os.path.realpath(arg.split(b"=", 1)[1].decode())
    return None


def _processes_of(session_dir: str) -> set[int]:
    """The processes with a file open in the session folder: the instance's, even those that renamed themselves."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd).startswith(session_dir + os.sep) for fd in (proc / "fd").iterdir()):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s} s")


def test_a_killed_harvest_leaves_no_process_of_its_local_ray(tiny_models, tmp_path):
    out_dir = tmp_path / "run"
    args = tiny_overrides(tiny_models["llama"], out_dir, **{"harvest.n_tokens": 6000, "ray.num_cpus": 1})
    log = (tmp_path / "harvest.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "pipeline", "harvest", *args], stdout=log, stderr=log)
    try:
        session = _wait_for(lambda: _session_dir(driver.pid), 120, "Ray session of the driver")
        completion = out_dir / "store.zarr" / "completion"
        _wait_for(lambda: any(completion.glob("shard-*.json")), 240, "shard written by a harvest actor")
        assert len(_processes_of(session)) > 2  # the GCS, the raylet, the actor and Ray's agents
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = _processes_of(session)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_of(session)
    for pid in left:  # so that a failing run does not leave them behind either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of {session} still running: {sorted(left)}"


def test_a_harvest_that_finishes_exits_0_and_leaves_no_process_of_its_local_ray(tiny_models, tmp_path):
    # The pipe to the watcher closes while the driver is still shutting down: the driver must not be among those killed.
    out_dir = tmp_path / "run"
    args = tiny_overrides(tiny_models["llama"], out_dir, **{"ray.num_cpus": 1})
    log = (tmp_path / "harvest.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "pipeline", "harvest", *args], stdout=log, stderr=log)
    session = _wait_for(lambda: _session_dir(driver.pid), 120, "Ray session of the driver")
    assert driver.wait(timeout=600) == 0, (tmp_path / "harvest.log").read_text()[-2000:]
    assert (out_dir / "store.zarr" / "zarr.json").exists()
    left = _processes_of(session)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_of(session)
    assert not left, f"processes of {session} still running: {sorted(left)}"
