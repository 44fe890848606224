"""The Wigzo sandbox: a real HTTP server on loopback that stands in for Wigzo in tests, the demo and benchmarks.

Wigzo routes (the documented checks; 200 ``{"status": "success"}``, 400 ``{"status": "error", "error",
"field"}`` naming the field, 401 on a bad token):

    POST /rest/v1/learn/identify?org_token=..[&token=..]   userId, and email or phone
    POST /rest/v1/learn/event?org_token=..[&token=..]      eventName, eventval (object), eventCategory
                                                           "EXTERNAL", userId; product_view needs
                                                           eventval.productId and .canonicalUrl;
                                                           order_completed needs eventval.orderId,
                                                           .customer_id and .line_items[*].product_id,
                                                           .variant_id, .quantity

``token`` is checked only when the sandbox has an API token. Requests carry an ``Idempotency-Key``
header; every request to a learn route counts as an attempt for its key, whatever its answer.

Retry-After is audited: after a 429 with ``Retry-After: T`` for a key (from any fault), a request for the
same key arriving more than 50 ms before T seconds have passed since the 429 was sent is a violation.
Clients that honour Retry-After cause none; the chaos suite asserts so.

Control API (JSON; not subject to faults):

    GET  /_sandbox/requests    {"requests": [...]} accepted requests in arrival order, each
                               {"path", "body", "idempotency_key", "received_at", "attempt", "user_agent"}
    GET  /_sandbox/count       {"count": n} accepted requests
    GET  /_sandbox/duplicates  {"duplicates": {key: n}} keys accepted more than once
    GET  /_sandbox/attempts    {"attempts": [...]} every learn request seen, each
                               {"path", "idempotency_key", "received_at", "attempt", "outcome"}
                               where outcome is the status sent, "hang" or "drop"
    GET  /_sandbox/violations  {"violations": [...]} Retry-After violations in arrival order, each
                               {"path", "idempotency_key", "received_at", "attempt", "retry_after",
                               "early_s"} (early_s = how long before the allowed time it arrived)
    GET  /_sandbox/stats       {"accepted", "seen", "connections_opened", "retry_after_violations"}
    GET  /_sandbox/faults      the faults in force (outage_seconds = what is left of the outage)
    POST /_sandbox/faults      change the given faults, e.g. {"error_rate": 0.2}; 400 on an unknown one.
                               Only a change naming outage_seconds starts (or, with 0, ends) an outage;
                               one naming rate_limit_per_second or rate_limit_burst refills the bucket
    POST /_sandbox/reset       forget all requests, attempts and violations, restore the faults the
                               sandbox started with (restarting their outage and a full bucket)

Faults (see `Faults`) apply to learn routes in this order: unauthorized, outage, fail_first_attempts,
rate limit, hang, drop, throttle, error; then the token and body checks and reject_event_names. Latency
delays every answer. The rate limit is a token bucket: rate_limit_per_second tokens a second, at most
rate_limit_burst saved up (0: one second's worth, at least 1); a request that finds no token is
answered 429 with Retry-After = whole seconds until one is available (at least 1).

``SandboxServer(..., ssl_context=...)`` (or ``--tls-cert FILE --tls-key FILE``) serves HTTPS instead.

The server is a small asyncio HTTP/1.1 implementation (keep-alive, Content-Length bodies) rather
than `http.server`, so that injected latency and hanging requests hold no threads, and so that the
sandbox is never the bottleneck of a benchmark (bench/bench_sandbox.py: ~36k requests/s on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import ssl
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl

import orjson
import requests

from pipeline.model import PipelineError

LEARN_PATHS = frozenset({"/rest/v1/learn/identify", "/rest/v1/learn/event"})
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
           422: "Unprocessable Entity", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}
HANG, DROP = "hang", "drop"
RETRY_AFTER_SLACK_S = 0.05  # clock and scheduling noise a client's retry may arrive early by without a violation


class SandboxError(PipelineError):
    """The sandbox refused a control request (e.g. an unknown fault); the message is the sandbox's."""


@dataclass(slots=True)
class Faults:
    """Misbehaviour to inject. Rates are shares of learn requests, 0.0 to 1.0."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0        # extra latency, uniform in [0, this]
    error_rate: float = 0.0               # answered 500 or 503 (half each)
    throttle_rate: float = 0.0            # answered 429 with Retry-After: retry_after_s
    retry_after_s: int = 1
    hang_rate: float = 0.0                # never answered (the connection is held until the client leaves)
    drop_rate: float = 0.0                # connection closed without an answer
    outage_seconds: float = 0.0           # every request answered 503 for this long from when it is set
    rate_limit_per_second: float = 0.0    # token bucket refill rate; 0 = no rate limit
    rate_limit_burst: int = 0             # tokens the bucket holds; 0 = one second's worth (at least 1)
    unauthorized: bool = False            # every request answered 401, as if the token were revoked
    reject_event_names: tuple[str, ...] = ()  # events with these eventName values answered 400
    fail_first_attempts: int = 0          # each idempotency key's first N attempts answered with fail_with
    fail_with: str = "503"                # an HTTP status, "hang" or "drop"

    def validated(self) -> Faults:
        for name in ("error_rate", "throttle_rate", "hang_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("latency_ms", "latency_jitter_ms", "outage_seconds", "retry_after_s", "fail_first_attempts",
                     "rate_limit_per_second", "rate_limit_burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.fail_with not in (HANG, DROP) and not (self.fail_with.isdigit() and 100 <= int(self.fail_with) < 600):
            raise ValueError('fail_with must be an HTTP status, "hang" or "drop"')
        return self

    def updated(self, changes: dict[str, Any]) -> Faults:
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown fault {', '.join(unknown)}; known: {', '.join(known)}")
        coerced: dict[str, Any] = {}
        for name, value in changes.items():
            current = getattr(self, name)
            if isinstance(current, tuple):
                if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{name} must be a list of strings")
                coerced[name] = tuple(value)
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
                coerced[name] = value
            elif isinstance(current, str):
                coerced[name] = str(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
                coerced[name] = type(current)(value)
        return replace(self, **coerced).validated()


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    payload: bytes
    extra_headers: str = ""
    retry_after: int | None = None  # sent as Retry-After, and audited for the key it answered


class _TokenBucket:
    """The rate limit: `rate` tokens a second, at most `capacity` saved up; each request takes one."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def _error(status: int, message: str, field: str = "") -> _Answer:
    payload: dict[str, str] = {"status": "error", "error": message}
    if field:
        payload["field"] = field
    return _Answer(status, orjson.dumps(payload))


SUCCESS = _Answer(200, orjson.dumps({"status": "success", "message": "accepted"}))


def _missing(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _check_identify(body: dict[str, Any]) -> tuple[str, str] | None:
    if _missing(body.get("userId")):
        return "userId", "userId is required"
    if _missing(body.get("email")) and _missing(body.get("phone")):
        return "email", "email or phone is required"
    return None


def _check_event(body: dict[str, Any]) -> tuple[str, str] | None:
    for name in ("eventName", "userId"):
        if _missing(body.get(name)):
            return name, f"{name} is required"
    if body.get("eventCategory") != "EXTERNAL":
        return "eventCategory", 'eventCategory must be "EXTERNAL"'
    eventval = body.get("eventval")
    if not isinstance(eventval, dict):
        return "eventval", "eventval must be an object"
    required: tuple[str, ...] = ()
    if body["eventName"] == "product_view":
        required = ("productId", "canonicalUrl")
    elif body["eventName"] == "order_completed":
        required = ("orderId", "customer_id", "line_items")
    for name in required:
        if _missing(eventval.get(name)):
            return f"eventval.{name}", f"eventval.{name} is required for {body['eventName']}"
    if body["eventName"] == "order_completed":
        items = eventval["line_items"]
        if not isinstance(items, list):
            return "eventval.line_items", "eventval.line_items must be a list"
        for index, item in enumerate(items):
            for name in ("product_id", "variant_id", "quantity"):
                if not isinstance(item, dict) or _missing(item.get(name)):
                    return f"eventval.line_items[{index}].{name}", f"eventval.line_items[{index}].{name} is required"
    return None


CHECKS = {"/rest/v1/learn/identify": _check_identify, "/rest/v1/learn/event": _check_event}


class _Wigzo:
    """The sandbox's state and request handling; lives on the event-loop thread, so needs no locks."""

    def __init__(self, org_token: str, api_token: str | None, faults: Faults) -> None:
        self.org_token = org_token
        self.api_token = api_token
        self.initial_faults = faults.validated()
        self.rng = random.Random()
        self.connections_opened = 0
        self.reset()

    def reset(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.accepted_per_key: Counter[str] = Counter()
        self.retry_not_before: dict[str, tuple[float, int]] = {}  # key -> (monotonic time, the Retry-After sent)
        self.violations: list[dict[str, Any]] = []
        self.set_faults(self.initial_faults, [f.name for f in fields(Faults)])

    def set_faults(self, faults: Faults, changed: Collection[str]) -> None:
        """Put `faults` in force. Only faults named in `changed` restart their clocks: an outage that has ended
        stays ended when, say, latency changes, and the rate limit's bucket keeps its tokens."""
        now = time.monotonic()
        self.faults = faults
        if "outage_seconds" in changed:
            self.outage_until = now + faults.outage_seconds
        if "rate_limit_per_second" in changed or "rate_limit_burst" in changed:
            rate = faults.rate_limit_per_second
            self.bucket = _TokenBucket(rate, faults.rate_limit_burst or max(1.0, rate), now) if rate else None

    def answer(self, request: _Request) -> tuple[_Answer | str, float]:
        """The answer (or HANG / DROP) and how many seconds to delay it."""
        if request.path.startswith("/_sandbox/"):
            return self.control(request), 0.0
        if request.path not in LEARN_PATHS:
            return _error(404, f"no route {request.path}"), 0.0
        if request.method != "POST":
            return _Answer(405, orjson.dumps({"status": "error", "error": "use POST"}), "Allow: POST\r\n"), 0.0
        faults = self.faults
        delay = 0.0
        if faults.latency_ms or faults.latency_jitter_ms:
            delay = (faults.latency_ms + self.rng.uniform(0, faults.latency_jitter_ms)) / 1000
        key = request.headers.get("idempotency-key", "")
        self.attempts[key] += 1
        attempt = self.attempts[key]
        now = time.time()
        monotonic = time.monotonic()
        self.audit_retry_after(request.path, key, attempt, now, monotonic)
        verdict = self.learn(request, faults, attempt, monotonic)
        outcome = SUCCESS if isinstance(verdict, dict) else verdict
        self.seen.append({"path": request.path, "idempotency_key": key, "received_at": now, "attempt": attempt,
                          "outcome": outcome if isinstance(outcome, str) else outcome.status})
        if isinstance(outcome, _Answer) and outcome.retry_after is not None and key:
            # the client's clock starts when it gets the answer, after the injected latency
            self.retry_not_before[key] = (monotonic + delay + outcome.retry_after, outcome.retry_after)
        if isinstance(verdict, dict):
            body = verdict
            self.accepted_per_key[key] += 1
            self.accepted.append({"path": request.path, "body": body, "idempotency_key": key, "received_at": now,
                                  "attempt": attempt, "user_agent": request.headers.get("user-agent", "")})
        return outcome, delay

    def audit_retry_after(self, path: str, key: str, attempt: int, now: float, monotonic: float) -> None:
        """Record a violation when `key` comes back sooner than the last 429 for it allowed."""
        allowed = self.retry_not_before.pop(key, None)
        if allowed is None:
            return
        not_before, retry_after = allowed
        if monotonic < not_before - RETRY_AFTER_SLACK_S:
            self.violations.append({"path": path, "idempotency_key": key, "received_at": now, "attempt": attempt,
                                    "retry_after": retry_after, "early_s": round(not_before - monotonic, 3)})

    def learn(self, request: _Request, faults: Faults, attempt: int, now: float) -> _Answer | str | dict[str, Any]:
        """The failure answer (or HANG / DROP), or the parsed body when the request is accepted."""
        if faults.unauthorized:
            return _error(401, "the token was rejected")
        if now < self.outage_until:
            return _error(503, "Wigzo is down for maintenance")
        if attempt <= faults.fail_first_attempts:
            return self.failure(faults.fail_with, faults)
        if self.bucket is not None and (wait := self.bucket.take(now)):
            return replace(_error(429, "rate limit exceeded"), retry_after=math.ceil(wait))  # wait > 0: at least 1
        roll = self.rng.random
        if faults.hang_rate and roll() < faults.hang_rate:
            return HANG
        if faults.drop_rate and roll() < faults.drop_rate:
            return DROP
        if faults.throttle_rate and roll() < faults.throttle_rate:
            return self.failure("429", faults)
        if faults.error_rate and roll() < faults.error_rate:
            return self.failure(self.rng.choice(("500", "503")), faults)
        params = dict(parse_qsl(request.query))
        if not params.get("org_token"):
            return _error(401, "org_token is required", "org_token")
        if params["org_token"] != self.org_token:
            return _error(401, "org_token is invalid", "org_token")
        if self.api_token is not None and params.get("token") != self.api_token:
            return _error(401, "token is missing or invalid", "token")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return _error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        problem = CHECKS[request.path](body)
        if problem:
            return _error(400, problem[1], problem[0])
        if faults.reject_event_names and body.get("eventName") in faults.reject_event_names:
            return _error(400, f"eventName {body['eventName']!r} is rejected by a strict rule", "eventName")
        return body

    @staticmethod
    def failure(kind: str, faults: Faults) -> _Answer | str:
        if kind in (HANG, DROP):
            return kind
        status = int(kind)
        answer = _error(status, f"injected HTTP {status}")
        if status == 429:
            return replace(answer, retry_after=faults.retry_after_s)
        return answer

    def control(self, request: _Request) -> _Answer:
        route = (request.method, request.path)
        if route == ("GET", "/_sandbox/requests"):
            return _Answer(200, orjson.dumps({"requests": self.accepted}))
        if route == ("GET", "/_sandbox/count"):
            return _Answer(200, orjson.dumps({"count": len(self.accepted)}))
        if route == ("GET", "/_sandbox/duplicates"):
            duplicates = {key: n for key, n in self.accepted_per_key.items() if n > 1}
            return _Answer(200, orjson.dumps({"duplicates": duplicates}))
        if route == ("GET", "/_sandbox/attempts"):
            return _Answer(200, orjson.dumps({"attempts": self.seen}))
        if route == ("GET", "/_sandbox/violations"):
            return _Answer(200, orjson.dumps({"violations": self.violations}))
        if route == ("GET", "/_sandbox/stats"):
            return _Answer(200, orjson.dumps({"accepted": len(self.accepted), "seen": len(self.seen),
                                              "connections_opened": self.connections_opened,
                                              "retry_after_violations": len(self.violations)}))
        if route == ("GET", "/_sandbox/faults"):
            return _Answer(200, orjson.dumps(self.current_faults()))
        if route == ("POST", "/_sandbox/faults"):
            try:
                changes = orjson.loads(request.body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of faults")
                self.set_faults(self.faults.updated(changes), changes.keys())
            except (ValueError, orjson.JSONDecodeError) as exc:
                return _error(400, str(exc))
            return _Answer(200, orjson.dumps(self.current_faults()))
        if route == ("POST", "/_sandbox/reset"):
            self.reset()
            return _Answer(200, orjson.dumps({"status": "reset"}))
        return _error(404, f"no control route {request.method} {request.path}")

    def current_faults(self) -> dict[str, Any]:
        faults = asdict(self.faults)
        faults["outage_seconds"] = max(0.0, self.outage_until - time.monotonic())
        return faults


def _encode(answer: _Answer, keep_alive: bool) -> bytes:
    closing = "" if keep_alive else "Connection: close\r\n"
    retry_after = "" if answer.retry_after is None else f"Retry-After: {answer.retry_after}\r\n"
    head = (f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Unknown')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(answer.payload)}\r\n"
            f"{answer.extra_headers}{retry_after}{closing}\r\n")
    return head.encode("latin-1") + answer.payload


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests off the buffer and answers them in order."""

    def __init__(self, wigzo: _Wigzo, open_connections: set[_Connection]) -> None:
        self._wigzo = wigzo
        self._open = open_connections
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiting: asyncio.TimerHandle | None = None
        self._busy = False  # an answer is delayed or the request hangs: later requests wait their turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open.add(self)
        self._wigzo.connections_opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        if self._waiting:
            self._waiting.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve()

    def abort(self) -> None:
        if self._transport:
            self._transport.abort()

    def _serve(self) -> None:
        while not self._busy and self._transport and not self._transport.is_closing():
            request = self._parse()
            if request is None:
                return
            answer, delay = self._wigzo.answer(request)
            if answer == HANG:
                self._busy = True
            elif delay:
                self._busy = True
                self._waiting = asyncio.get_running_loop().call_later(delay, self._deliver, answer, request.keep_alive)
            else:
                self._send(answer, request.keep_alive)

    def _deliver(self, answer: _Answer | str, keep_alive: bool) -> None:
        self._busy = False
        self._waiting = None
        self._send(answer, keep_alive)
        self._serve()

    def _send(self, answer: _Answer | str, keep_alive: bool) -> None:
        if self._transport is None:
            return
        if isinstance(answer, str):  # DROP: close without a word
            self._transport.abort()
            return
        self._transport.write(_encode(answer, keep_alive))
        if not keep_alive:
            self._transport.close()

    def _parse(self) -> _Request | None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._send(_error(431, "request head too large"), keep_alive=False)
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
            self._send(_error(400, "malformed HTTP request"), keep_alive=False)
            return None
        if "transfer-encoding" in headers:
            self._send(_error(501, "send a Content-Length body, not chunked"), keep_alive=False)
            return None
        if length > MAX_BODY_BYTES:
            self._send(_error(413, f"the body exceeds {MAX_BODY_BYTES} bytes"), keep_alive=False)
            return None
        total = end + 4 + length
        if len(self._buffer) < total:
            return None
        body = bytes(self._buffer[end + 4:total])
        del self._buffer[:total]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        path, _, query = target.partition("?")
        return _Request(method, path, query, headers, body, keep_alive)


class SandboxServer:
    """The sandbox in-process, serving from a background thread with its own event loop.

    With `ssl_context` (a server-side context holding the certificate) it serves HTTPS, so tests can check
    the client's certificate verification against a real handshake."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, org_token: str, api_token: str | None = None,
                 faults: Faults | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        if not org_token:
            raise SandboxError("the sandbox needs an org token: pass --org-token or set WIGZO_ORG_TOKEN")
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._wigzo = _Wigzo(org_token, api_token or None, faults or Faults())
        self._loop = asyncio.new_event_loop()
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


class SandboxControl:
    """Client of the control API, for tests, the demo and other processes. `ca_bundle` trusts the certificate
    of a sandbox serving HTTPS."""

    def __init__(self, url: str, *, ca_bundle: str | None = None) -> None:
        self._url = url.rstrip("/") + "/_sandbox"
        self._session = requests.Session()
        self._verify: str | bool = ca_bundle or True  # per call: REQUESTS_CA_BUNDLE would override Session.verify

    def _call(self, method: str, route: str, payload: dict[str, Any] | None = None) -> Any:
        response = self._session.request(method, f"{self._url}/{route}", data=orjson.dumps(payload) if payload else None,
                                         timeout=10, verify=self._verify)
        answer = orjson.loads(response.content)
        if response.status_code != 200:
            raise SandboxError(f"sandbox {route}: {answer.get('error', response.text)}")
        return answer

    def received(self) -> list[dict[str, Any]]:
        return self._call("GET", "requests")["requests"]

    def count(self) -> int:
        return self._call("GET", "count")["count"]

    def duplicates(self) -> dict[str, int]:
        return self._call("GET", "duplicates")["duplicates"]

    def attempts(self) -> list[dict[str, Any]]:
        return self._call("GET", "attempts")["attempts"]

    def retry_after_violations(self) -> list[dict[str, Any]]:
        """Requests that came back for their key before the Retry-After of its last 429 allowed."""
        return self._call("GET", "violations")["violations"]

    def stats(self) -> dict[str, int]:
        return self._call("GET", "stats")

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "faults")

    def reset(self) -> None:
        self._call("POST", "reset")

    def set_faults(self, **faults: Any) -> None:
        self._call("POST", "faults", faults)

    def close(self) -> None:
        self._session.close()


FAULT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("latency_ms", float, "delay every answer by this many milliseconds"),
    ("latency_jitter_ms", float, "add a random delay up to this many milliseconds"),
    ("error_rate", float, "share of requests answered 500/503"),
    ("throttle_rate", float, "share of requests answered 429 with Retry-After"),
    ("retry_after_s", int, "the Retry-After seconds sent with 429"),
    ("hang_rate", float, "share of requests never answered"),
    ("drop_rate", float, "share of connections dropped without an answer"),
    ("outage_seconds", float, "answer everything 503 for this many seconds from start"),
    ("rate_limit_per_second", float, "token bucket rate limit: requests allowed per second, beyond it 429"),
    ("rate_limit_burst", int, "tokens the rate limit saves up (default: one second's worth)"),
    ("fail_first_attempts", int, "answer each idempotency key's first N attempts with --fail-with"),
    ("fail_with", str, 'status for --fail-first-attempts, or "hang" / "drop"'),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument("--org-token", default=None, help="the org_token to require [env WIGZO_ORG_TOKEN]")
    parser.add_argument("--api-token", default=None, help="the token to require, if any [env WIGZO_API_TOKEN]")
    for name, kind, help_text in FAULT_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    parser.add_argument("--unauthorized", action="store_true", default=None, help="answer everything 401")
    parser.add_argument("--reject-event-names", default=None, metavar="NAME,...",
                        help="answer events with these eventName values 400")
    parser.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS with this PEM certificate "
                        "(chain); needs --tls-key")
    parser.add_argument("--tls-key", default=None, metavar="FILE", help="the PEM private key for --tls-cert")


def _ssl_context_from(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context for the sandbox from PEM files, or a SandboxError saying what is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:  # a missing file, or ssl.SSLError: not PEM, or a key that does not match
        raise SandboxError(f"cannot serve HTTPS with --tls-cert {cert_file} --tls-key {key_file}: {exc}") from None
    return context


def main(args: argparse.Namespace) -> int:
    org_token = args.org_token or os.environ.get("WIGZO_ORG_TOKEN", "")
    api_token = args.api_token or os.environ.get("WIGZO_API_TOKEN") or None
    changes: dict[str, Any] = {name: getattr(args, name) for name, _, _ in FAULT_FLAGS
                               if getattr(args, name) is not None}
    if args.unauthorized:
        changes["unauthorized"] = True
    if args.reject_event_names:
        changes["reject_event_names"] = [n.strip() for n in args.reject_event_names.split(",") if n.strip()]
    try:
        faults = Faults().updated(changes)
    except ValueError as exc:
        raise SandboxError(str(exc)) from None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SandboxError("pass both --tls-cert and --tls-key to serve HTTPS, or neither for HTTP")
    ssl_context = _ssl_context_from(args.tls_cert, args.tls_key) if args.tls_cert else None
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    server = SandboxServer(host=args.host, port=args.port, org_token=org_token, api_token=api_token,
                           faults=faults, ssl_context=ssl_context).start()
    print(server.url, flush=True)
    while not stopped.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":  # `python -m pipeline.dev.sandbox`: the same server without importing the other stages
    import sys

    cli = argparse.ArgumentParser(prog="python -m pipeline.dev.sandbox", description="serve the Wigzo sandbox")
    add_arguments(cli)
    try:
        sys.exit(main(cli.parse_args()))
    except PipelineError as exc:
        print(f"sandbox: error: {exc}", file=sys.stderr)
        sys.exit(2)
