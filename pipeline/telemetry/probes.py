"""One HTTP port for operators: Prometheus metrics, a liveness probe and a readiness probe.

- `/metrics`: every metric in pipeline.telemetry.metrics (prometheus-client's exposition).
- `/healthz`: 200 while the consume loop turns (it polled Kafka within `LIVENESS_BOUND`), else 503.
  The bound is generous: a revocation may drain deliveries (connect + read timeout) and wait for
  dead letters to be acknowledged, and a Schema Registry outage is waited out for two minutes.
- `/readyz`: 200 when this member is in its consumer group and can take work; 503 with a JSON body
  listing why not (Wigzo's circuit open, token rejected or misconfigured; the dead-letter topic failing;
  Kafka unreachable).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from pipeline.config import ConfigError
from pipeline.telemetry import metrics  # noqa: F401 - registers the pipeline's metrics wherever probes are served

log = logging.getLogger(__name__)

LIVENESS_BOUND = 150.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """Probes hit every few seconds: an access log line each would drown the pipeline's own lines."""


class ProbeApp:
    """The WSGI app; `last_poll` is the monotonic time the loop last polled, `readiness` lists why not ready;
    `registry` is what /metrics serves (a supervisor's collects every worker process)."""

    def __init__(self, last_poll: Callable[[], float], readiness: Callable[[], list[str]],
                 clock: Callable[[], float] = time.monotonic, registry: CollectorRegistry = REGISTRY) -> None:
        self._last_poll = last_poll
        self._readiness = readiness
        self._clock = clock
        self._metrics = make_wsgi_app(registry)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            stalled = self._clock() - self._last_poll()
            alive = stalled < LIVENESS_BOUND
            return _json(start_response, alive, {"alive": alive, "seconds_since_poll": round(stalled, 1)})
        if path == "/readyz":
            reasons = self._readiness()
            return _json(start_response, not reasons, {"ready": not reasons, "reasons": reasons})
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


def _json(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
    return [orjson.dumps(body)]


class ProbeServer:
    """Serves a ProbeApp from a daemon thread; port 0 picks a free port (tests)."""

    def __init__(self, app: ProbeApp, port: int, host: str = "0.0.0.0") -> None:
        try:
            self._server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"METRICS_PORT={port}: cannot listen on it ({exc.strerror}); choose a free port, "
                              "or 0 to turn metrics and probes off") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    def start(self) -> ProbeServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on port %d", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
