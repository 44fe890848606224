"""The sandbox's HTTP server: a small asyncio HTTP/1.1 implementation (keep-alive, Content-Length bodies) in front
of `Wigzo`, serving from a background thread.

It is not `http.server`, so that injected latency and hanging requests hold no threads, and so that the
sandbox is never the bottleneck of a benchmark (bench/bench_sandbox.py: ~36k requests/s on 2 cores).
``SandboxServer(..., ssl_context=...)`` serves HTTPS instead. A client that resets its connection, at any point,
costs at most one quiet log line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from pipeline.dev.sandbox.wigzo_rules import HANG, Answer, Faults, Request, SandboxError, Wigzo, error_answer

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
           422: "Unprocessable Entity", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


def _encode(answer: Answer, keep_alive: bool) -> bytes:
    closing = "" if keep_alive else "Connection: close\r\n"
    retry_after = "" if answer.retry_after is None else f"Retry-After: {answer.retry_after}\r\n"
    head = (f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Unknown')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(answer.payload)}\r\n"
            f"{answer.extra_headers}{retry_after}{closing}\r\n")
    return head.encode("latin-1") + answer.payload


def _quiet_client_resets(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that resets or botches its connection before it is served (during the TLS handshake: the reset,
    a plain HTTP request, an untrusted certificate) is the client's business: one quiet line, not the traceback
    asyncio's debug mode (PYTHONASYNCIODEBUG, python -X dev) prints for it. Anything else goes to asyncio."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionError | ssl.SSLError):
        log.info("a client's connection ended before it was served (%s: %s)", type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests off the buffer and answers them in order."""

    def __init__(self, wigzo: Wigzo, open_connections: set[_Connection]) -> None:
        self._wigzo = wigzo
        self._open = open_connections
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiting: asyncio.TimerHandle | None = None
        self._next: asyncio.Handle | None = None  # the turn of the loop that answers the next pipelined request
        self._busy = False  # an answer is delayed or the request hangs: later requests wait their turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open.add(self)
        self._wigzo.connections_opened += 1
        self._wigzo.connections_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        self._wigzo.connections_open -= 1
        for pending in (self._waiting, self._next):
            if pending:
                pending.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._next is None:
            self._serve()

    def abort(self) -> None:
        if self._transport:
            self._transport.abort()

    def _serve(self) -> None:
        """Answer the request at the head of the buffer; one pipelined behind it is answered on the next turn of
        the loop. In between the loop notices a client that reset the connection, so no answer is written to a
        dead one (asyncio would log a warning for each: thousands when a client pipelined a burst over TLS)."""
        self._next = None
        if self._busy or self._transport is None or self._transport.is_closing():
            return
        request = self._parse()
        if request is None:
            return
        answer, delay = self._wigzo.answer(request)
        if answer == HANG:
            self._busy = True
        elif delay:
            self._busy = True
            self._waiting = asyncio.get_running_loop().call_later(delay, self._write_answer, answer, request.keep_alive)
        else:
            self._send(answer, request.keep_alive)
            self._serve_next()

    def _write_answer(self, answer: Answer | str, keep_alive: bool) -> None:
        self._busy = False
        self._waiting = None
        self._send(answer, keep_alive)
        self._serve_next()

    def _serve_next(self) -> None:
        if self._buffer and self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._serve)

    def _send(self, answer: Answer | str, keep_alive: bool) -> None:
        if self._transport is None:
            return
        if isinstance(answer, str):  # DROP: close without a word
            self._transport.abort()
            return
        self._transport.write(_encode(answer, keep_alive))
        if not keep_alive:
            self._transport.close()

    def _parse(self) -> Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._send(error_answer(431, "request head too large"), keep_alive=False)
            return None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._send(error_answer(400, "malformed HTTP request"), keep_alive=False)
            return None
        if "transfer-encoding" in headers:
            self._send(error_answer(501, "send a Content-Length body, not chunked"), keep_alive=False)
            return None
        if length > MAX_BODY_BYTES:
            self._send(error_answer(413, f"the body exceeds {MAX_BODY_BYTES} bytes"), keep_alive=False)
            return None
        total = end + 4 + length
        if len(self._buffer) < total:
            return None
        body = bytes(self._buffer[end + 4:total])
        del self._buffer[:total]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, keep_alive)


class SandboxServer:
    """The sandbox in-process, serving from a background thread with its own event loop.

    With `ssl_context` (a server-side context holding the certificate) it serves HTTPS, so tests can check
    the client's certificate verification against a real handshake."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, org_token: str | Sequence[str],
                 api_token: str | None = None, faults: Faults | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`org_token`: the one it accepts, or several (one sandbox standing in for several organizations)."""
        org_tokens = (org_token,) if isinstance(org_token, str) else tuple(org_token)
        if not org_tokens or not all(org_tokens):
            raise SandboxError("the sandbox needs an org token: pass --org-token or set WIGZO_ORG_TOKEN")
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._wigzo = Wigzo(org_tokens, api_token or None, faults or Faults())
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_client_resets)
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self.url = ""

    def start(self) -> SandboxServer:
        self._server = self._loop.run_until_complete(self._loop.create_server(
            lambda: _Connection(self._wigzo, self._connections), self._host, self._port, backlog=1024,
            ssl=self._ssl_context))
        host, port = self._server.sockets[0].getsockname()[:2]
        scheme = "https" if self._ssl_context else "http"
        self.url = f"{scheme}://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self._thread = threading.Thread(target=self._loop.run_forever, name="wigzo-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return

        def shut_down() -> None:
            assert self._server is not None
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            self._loop.call_soon(self._loop.stop)

        self._loop.call_soon_threadsafe(shut_down)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
