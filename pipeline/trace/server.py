"""The trace folder served to circuit-tracer's frontend on loopback only.

circuit-tracer's own `serve` binds every interface, which would show the graphs and the training
contexts in the feature cards to the whole network; this binds 127.0.0.1 and reuses its request
handler and bundled frontend. The frontend's pages load their scripts from the internet.
"""

import functools
import socketserver
import threading
from pathlib import Path

from pipeline.errors import ConfigError

HOST = "127.0.0.1"


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True  # a browser's open connection does not hold up `stop`
    allow_reuse_address = True  # a port just closed (in TIME_WAIT) binds again; one still listening does not


class Serving:
    """A running server; `stop()` closes it."""

    def __init__(self, httpd: _Server):
        self.httpd = httpd
        self.port = httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}/"
        self._thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


def serve(trace_dir: Path, port: int) -> Serving:
    """Serves `trace_dir` (graph files, `graph-metadata.json`, `features/`) at http://127.0.0.1:`port`/ until
    `stop()`; ConfigError naming `trace.port` if the port cannot be bound."""
    from circuit_tracer.frontend.local_server import DEFAULT_FRONTEND_DIR, CircuitGraphHandler

    handler = functools.partial(CircuitGraphHandler, frontend_dir=DEFAULT_FRONTEND_DIR, data_dir=str(trace_dir))
    try:
        httpd = _Server((HOST, port), handler)
    except OSError as err:
        raise ConfigError(f"trace.port: cannot serve on {HOST}:{port} ({err.strerror}); choose a free port") from err
    return Serving(httpd)
