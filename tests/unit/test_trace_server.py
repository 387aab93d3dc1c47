"""The trace folder served on loopback with circuit-tracer's handler: graph metadata, a graph and a feature card
answer on 127.0.0.1, no other interface answers, and a port in use is a ConfigError naming trace.port."""

import json
import socket
import urllib.request

import pytest

from pipeline.errors import ConfigError
from pipeline.trace.server import serve


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


@pytest.fixture
def trace_dir(tmp_path):
    (tmp_path / "features" / "clt").mkdir(parents=True)
    files = {
        "graph-metadata.json": {"graphs": [{"slug": "tiny-add", "scan": "./data/features/clt"}]},
        "tiny-add.json": {"metadata": {"slug": "tiny-add"}, "nodes": [], "links": []},
        "features/clt/7.json": {"index": 7, "act_max": 1.5},
    }
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    return tmp_path


def test_the_graph_files_and_a_feature_card_answer_on_loopback(trace_dir):
    server = serve(trace_dir, 0)
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        assert json.loads(_get(server.url + "data/graph-metadata.json"))["graphs"][0]["slug"] == "tiny-add"
        assert json.loads(_get(server.url + "graph_data/tiny-add.json"))["metadata"] == {"slug": "tiny-add"}
        assert json.loads(_get(server.url + "data/features/clt/7.json")) == {"index": 7, "act_max": 1.5}
        assert b"<!doctype html>" in _get(server.url + "index.html").lower()  # circuit-tracer's bundled frontend
    finally:
        server.stop()
    with pytest.raises(OSError):
        _get(server.url + "data/graph-metadata.json")  # stopped: nothing answers


def _other_address() -> str | None:
    """An IPv4 address of one of this machine's interfaces outside loopback, if it has one."""
    psutil = pytest.importorskip("psutil")
    addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET]
    return next((address for address in addresses if not address.startswith("127.")), None)


def test_no_other_interface_answers(trace_dir):
    address = _other_address()
    if address is None:
        pytest.skip("this machine has no interface address outside loopback")
    server = serve(trace_dir, 0)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, server.port), timeout=5).close()
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error_naming_trace_port(trace_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^trace\.port: cannot serve on 127\.0\.0\.1:{port} "):
            serve(trace_dir, port)
