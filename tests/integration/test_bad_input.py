"""Bad inputs given to the `pipeline` command: each is refused in seconds, with one line, exit 2 and nothing written."""

import os
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.models.loading import HUB_PROBE_TIMEOUT_S

pytestmark = pytest.mark.cluster

# Seconds a refusal may take beyond the command's start-up (importing torch and transformers, composing the
# config: several seconds, more on a loaded machine); the network probes give up within 5 s.
BOUND_S = 10


def _run(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env, timeout=300
    )
    return done, time.monotonic() - start


@pytest.fixture
def startup_s() -> float:
    """What `pipeline harvest --help` takes on this machine now, just before the case: the start-up every refusal pays
    first. Measured again for each case, as other work on the machine may slow both alike."""
    done, elapsed = _run(["harvest", "--help"], dict(os.environ))
    assert done.returncode == 0, done.stderr
    return elapsed


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


_NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # torch, and a local Ray instance, see no GPU

# (case, the command line after `pipeline`, the environment it adds, what the line names); `{in}` is a folder of
# inputs outside out_dir.
CASES = [
    ("unknown model", ["harvest", "model.name=nobody/no-such-model"], {}, "model.name"),
    ("unknown model offline", ["harvest", "model.name=nobody/no-such-model"], {"HF_HUB_OFFLINE": "1"}, "model.name"),
    ("closed ray port", ["harvest", "ray.address=127.0.0.1:1"], {}, "ray.address"),
    ("unanswering ray address", ["harvest", "ray.address=10.255.255.1:6379"], {}, "ray.address"),
    ("ray client address", ["harvest", "ray.address=ray://127.0.0.1:1"], {}, "ray.address"),
    ("unknown hub data set", ["harvest", "data=hf", "data.name=nobody/no-such-data-set"], {}, "data.name"),
    ("out_dir is a file", ["harvest", "out_dir={in}/a-file"], {}, "out_dir"),
    ("out_dir under a file", ["harvest", "out_dir={in}/a-file/run"], {}, "out_dir"),
    ("context longer than the model", ["harvest", "data.context_len=600"], {}, "data.context_len"),
    ("sweep file not YAML", ["run", "sweep.name={in}/broken.yaml"], {}, "broken.yaml"),
    ("sweep file a list", ["run", "sweep.name={in}/list.yaml"], {}, "list.yaml"),
    ("placement timeout zero", ["harvest", "harvest.place_timeout_s=0"], {}, "harvest.place_timeout_s"),
    ("replica larger than the machine", ["harvest", "harvest.cpus_per_replica=999"], {}, "harvest.cpus_per_replica"),
    ("replicas beyond the machine", ["harvest", "ray.num_cpus=1", "harvest.replicas=2"], {}, "harvest.replicas"),
    ("replica GPU, none here", ["harvest", "harvest.gpus_per_replica=1"], _NO_GPU, "harvest.gpus_per_replica"),
    ("ray launcher, closed port", ["sweep", "launcher=ray", "ray.address=127.0.0.1:1"], {}, "ray.address"),
    ("ray launcher task GPU, none here", ["run", "launcher=ray", "launcher.gpus_per_arm=1"], _NO_GPU, "gpus_per_arm"),
    (
        "ray launcher workers, no GPU",
        ["run", "launcher=ray", "launcher.gpus_per_arm=2", "train.parallel=ddp"],
        _NO_GPU,
        "launcher.gpus_per_arm",
    ),
    ("fit metric a sweep does not record", ["run", "fit.metrics=[nope]"], {}, "fit.metrics"),
]


@pytest.mark.parametrize(("args", "env", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_in_seconds_with_one_line_and_nothing_written(startup_s, tmp_path, args, env, names):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _write(inputs, "a-file", "not a folder\n")
    _write(inputs, "broken.yaml", "budgets: [1e9, 2e9\nlrs: [1e-3]\n")
    _write(inputs, "list.yaml", "- 1\n- 2\n")
    out_dir = tmp_path / "out"
    args = [a.replace("{in}", str(inputs)) for a in args]
    if not any(a.startswith("out_dir=") for a in args):
        args.append(f"out_dir={out_dir}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")} | env
    done, elapsed = _run(args, environ)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert elapsed < startup_s + BOUND_S, f"took {elapsed:.1f} s, start-up {startup_s:.1f} s"
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], done.stderr
    assert not out_dir.exists()
    assert sorted(p.name for p in inputs.iterdir()) == ["a-file", "broken.yaml", "list.yaml"]
    assert (inputs / "a-file").read_text() == "not a folder\n"


class _FlakyHub(socketserver.ThreadingTCPServer):
    """A hub at 127.0.0.1 that accepts every connection and then fails: it resets it (`reset`), never answers
    (`silent`), answers 500 (`error`), or answers the first request 200 and every later one 500 (`once`)."""

    daemon_threads = True

    def __init__(self, mode: str):
        self.mode, self.requests = mode, 0
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        hub = self.server
        hub.requests += 1
        if hub.mode == "reset":
            return
        self.request.recv(65536)
        if hub.mode == "silent":
            time.sleep(60)
            return
        status = "200 OK" if hub.mode == "once" and hub.requests == 1 else "500 Internal Server Error"
        self.request.sendall(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


@pytest.fixture
def flaky_hub(request):
    hub = _FlakyHub(request.param)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    yield hub
    hub.shutdown()
    hub.server_close()


def _ask_the_hub(hub: _FlakyHub, tmp_path: Path, env: dict):
    """`pipeline harvest` of a model only the hub could hold, with an empty Hugging Face cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    environ |= {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_HOME": str(tmp_path / "hf"), **env}
    return _run(["harvest", "model.name=nobody/no-such-model", f"out_dir={tmp_path / 'out'}"], environ)


def _assert_one_line_naming_the_model(done: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: model.name: 'nobody/no-such-model'")
    assert done.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flaky_hub", ["reset", "silent", "error"], indirect=True)
def test_a_hub_that_accepts_connections_but_fails_requests_is_passed_over_in_seconds(startup_s, flaky_hub, tmp_path):
    done, elapsed = _ask_the_hub(flaky_hub, tmp_path, {})
    _assert_one_line_naming_the_model(done, tmp_path)
    assert "no hub answering" in done.stderr
    assert elapsed < startup_s + BOUND_S + HUB_PROBE_TIMEOUT_S, f"took {elapsed:.1f} s, start-up {startup_s:.1f} s"
    assert flaky_hub.requests == 1  # the probe alone: no request was retried


@pytest.mark.slow
@pytest.mark.parametrize("flaky_hub", ["once"], indirect=True)
def test_a_hub_that_answers_once_and_then_fails_prints_no_retries(flaky_hub, tmp_path):
    done, _ = _ask_the_hub(flaky_hub, tmp_path, {})
    _assert_one_line_naming_the_model(done, tmp_path)  # huggingface_hub's retries, about 25 s, print nothing
    assert flaky_hub.requests > 2


@pytest.mark.parametrize("flaky_hub", ["error"], indirect=True)
def test_hf_hub_offline_asks_the_hub_nothing(startup_s, flaky_hub, tmp_path):
    done, elapsed = _ask_the_hub(flaky_hub, tmp_path, {"HF_HUB_OFFLINE": "1"})
    _assert_one_line_naming_the_model(done, tmp_path)
    assert elapsed < startup_s + BOUND_S and flaky_hub.requests == 0
