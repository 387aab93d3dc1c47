"""infra/: a real multi-node Ray cluster on loopback runs the smoke pipeline through `ray job submit`.
(The checks of the cluster, KubeRay and Slurm files are in tests/unit/test_infra.py.)"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]


BIN = Path(sys.executable).parent  # the `ray` and `pipeline` commands of this environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackCluster:
    """A head and a worker, each a `ray start --block` in its own session, so teardown ends exactly these processes.

    `ray stop` is not used: it ends every Ray process on the machine by name, including the in-process instance
    of the other tests and anyone else's cluster. The cluster has its own temp dir, ports and auth token, and
    RAY_ADDRESS from the calling environment is not passed on.
    """

    def __init__(self):
        # Short: Ray's Unix sockets live under the temp dir and socket paths are limited to ~107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.token = secrets.token_hex(32)
        (self.root / "auth_token").write_text(self.token)
        # Nothing of another Ray instance (RAY_ADDRESS, an auth mode or token) leaks in from this process.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            # Recent Ray turns token auth on for `ray start --head` (2.60 does); every node and client needs the token.
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.root / "auth_token"),
            RAY_USAGE_STATS_ENABLED="0",
            WANDB_MODE="disabled",
        )
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_files = []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_node(self, name: str, *args: str) -> None:
        common = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={self.root / name}",
            "--num-gpus=0",
            "--object-store-memory=150000000",
            # Two raylets on one host: every fixed default port gets its own free port.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        log = open(self.root / f"{name}.log", "w")
        self.log_files.append(log)
        self.procs[name] = subprocess.Popen(
            common + list(args), env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def api(self, path: str):
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        try:
            reply = self.api("/api/v0/nodes?limit=100")
        except OSError:
            return []
        return [n for n in reply["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for(self, n_nodes: int, timeout_s: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start ({name}) exited with {proc.returncode}:\n{self.logs()}")
            nodes = self.alive_nodes()
            if len(nodes) >= n_nodes:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"{n_nodes} nodes did not come up in {timeout_s:.0f} s:\n{self.logs()}")

    def start(self) -> None:
        self.start_node(
            "head",
            "--head",
            f"--port={self.gcs_port}",
            "--num-cpus=1",
            '--resources={"head": 1}',
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        )
        self.wait_for(1)
        self.start_node("worker", f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=1", '--resources={"worker": 1}')
        self.wait_for(2)

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("head", "worker"):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}.log\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def session_pids(self) -> set[int]:
        """Every process still in one of the nodes' sessions (ray start, its daemons, Ray workers, job drivers)."""
        sids = {p.pid for p in self.procs.values()}  # start_new_session: each session's id is its ray start's pid
        pids = set()
        proc = Path("/proc")  # Linux; elsewhere the process groups killed in stop() are all there is to go on
        for entry in proc.iterdir() if proc.is_dir() else []:
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) in sids:
                    pids.add(int(entry.name))
            except OSError:
                pass
        return pids

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its process group: Ray's daemons and workers on that node
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(10):
            left = self.session_pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for log in self.log_files:
            log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def loopback_cluster():
    if not (BIN / "ray").exists():
        pytest.skip("the ray command is not installed next to this Python")
    cluster = LoopbackCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert not cluster.session_pids(), "processes of the test's Ray cluster outlived its teardown"


def writer_pids(store: Path) -> set[int]:
    return {
        int(json.loads(p.read_text())["writer"].rsplit(":", 1)[1]) for p in (store / "completion").glob("shard-*.json")
    }


def actor_nodes(cluster: LoopbackCluster, class_name: str) -> dict[int, str]:
    """pid -> node id of every actor of this class the cluster ran, dead ones included (Ray's state API)."""
    actors = cluster.api("/api/v0/actors?limit=1000&detail=true")["data"]["result"]["result"]
    return {a["pid"]: a["node_id"] for a in actors if a["class_name"] == class_name}


def task_nodes(cluster: LoopbackCluster, prefix: str) -> list[str]:
    """The node id of every finished task whose function's name starts with `prefix`."""
    tasks = cluster.api("/api/v0/tasks?limit=10000&detail=true")["data"]["result"]["result"]
    return [t["node_id"] for t in tasks if t["func_or_class_name"].startswith(prefix) and t["state"] == "FINISHED"]


def test_smoke_pipeline_runs_as_a_job_on_a_two_node_ray_cluster(loopback_cluster, tmp_path):
    import pandas as pd

    from pipeline.store.activation_store import ActivationStore
    from pipeline.store.verify import data_damage
    from pipeline.sweep.spec import load_spec

    cluster = loopback_cluster
    out = tmp_path / "cluster-smoke"
    entrypoint = [
        "pipeline", "run", f"out_dir={out}", "sweep=smoke", "harvest.n_tokens=20000", "tracking.mode=disabled",
        "ray.address=auto",  # the job's driver joins the cluster it was submitted to
        "harvest.replicas=2", "harvest.cpus_per_replica=1",  # one model replica per node (each node has 1 CPU)
        "launcher=ray", "launcher.cpus_per_arm=1",  # arms run as Ray tasks, on both nodes
        "fit.n_bootstrap=100",
    ]  # fmt: skip
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--", *entrypoint],
        env=cluster.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, f"job failed:\n{job.stdout[-6000:]}\n{job.stderr[-3000:]}\n{cluster.logs()}"
    assert "succeeded" in job.stdout

    spec = load_spec("smoke")
    table = pd.read_parquet(out / "sweep" / "results.parquet")
    assert len(table) == len(spec.budgets) * len(spec.expansion) * len(spec.lrs)
    assert (table.status == "done").all(), table[table.status != "done"][["run_id", "error"]].to_string()

    # The store is complete: every shard has its completion record and still matches the recorded checksums.
    store = out / "store.zarr"
    written = ActivationStore(store)
    assert written.complete and not written.incomplete_shards()
    assert all(data_damage(written, k) is None for k in range(written.layout.n_shards))
    assert written.layout.n_rows >= 20_000
    assert (out / "fit" / "fit.json").exists()

    # Each node ran one harvest actor: the shards' writers are two actors, on two different nodes.
    writers = writer_pids(store)
    nodes = actor_nodes(cluster, "HarvestWorker")
    assert len(writers) == 2 and writers <= set(nodes), (writers, nodes)
    assert len({nodes[pid] for pid in writers}) == 2, nodes
    # The arms ran as Ray tasks (one per arm, or per pack of arms); the first two start together, so on both nodes.
    arm_nodes = task_nodes(cluster, "run_hydra_job")  # the project's Hydra Ray launcher runs each pack as this task
    assert arm_nodes, "no sweep arm ran as a Ray task"
    assert len(arm_nodes) == 1 or len(set(arm_nodes)) == 2, arm_nodes
