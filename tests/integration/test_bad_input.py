"""Bad inputs given to the `pipeline` command: each is refused in seconds, with one line, exit 2 and nothing written."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def startup_s() -> float:
    """What `pipeline harvest --help` takes on this machine now: the start-up every refusal pays first."""
    done, elapsed = _run(["harvest", "--help"], dict(os.environ))
    assert done.returncode == 0, done.stderr
    return elapsed


def _write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


# (case, the command line after `pipeline`, the environment it adds, what the line names); `{in}` is a folder of
# inputs outside out_dir.
CASES = [
    ("unknown model", ["harvest", "model.name=nobody/no-such-model"], {}, "model.name"),
    ("unknown model offline", ["harvest", "model.name=nobody/no-such-model"], {"HF_HUB_OFFLINE": "1"}, "model.name"),
    ("closed ray port", ["harvest", "ray.address=127.0.0.1:1"], {}, "ray.address"),
    ("unanswering ray address", ["harvest", "ray.address=10.255.255.1:6379"], {}, "ray.address"),
    ("ray client address", ["harvest", "ray.address=ray://127.0.0.1:1"], {}, "ray.address"),
    ("out_dir is a file", ["harvest", "out_dir={in}/a-file"], {}, "out_dir"),
    ("out_dir under a file", ["harvest", "out_dir={in}/a-file/run"], {}, "out_dir"),
    ("context longer than the model", ["harvest", "data.context_len=600"], {}, "data.context_len"),
    ("sweep file not YAML", ["run", "sweep.name={in}/broken.yaml"], {}, "broken.yaml"),
    ("sweep file a list", ["run", "sweep.name={in}/list.yaml"], {}, "list.yaml"),
    ("placement timeout zero", ["harvest", "harvest.place_timeout_s=0"], {}, "harvest.place_timeout_s"),
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
