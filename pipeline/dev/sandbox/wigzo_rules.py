"""Wigzo's rules as the sandbox applies them, and the faults it injects: pure request-in, answer-out logic, no sockets.

Wigzo routes (the documented checks; 200 ``{"status": "success"}``, 400 ``{"status": "error", "error",
"field"}`` naming the field, 401 on a bad token):

    POST /rest/v1/learn/identify?org_token=..[&token=..]   userId, and email or phone
    POST /rest/v1/learn/event?org_token=..[&token=..]      eventName, eventval (object), eventCategory
                                                           "EXTERNAL", userId; product_view needs
                                                           eventval.productId and .canonicalUrl;
                                                           order_completed needs eventval.orderId,
                                                           .customer_id and .line_items[*].product_id,
                                                           .variant_id, .quantity

``org_token`` must be one of the sandbox's org tokens: it accepts several, so one sandbox stands in for several
Wigzo organizations (a deployment with several destinations), and records which one each request carried.
``token`` is checked only when the sandbox has an API token. Requests carry an ``Idempotency-Key``
header; every request to a learn route counts as an attempt for its key, whatever its answer.

Retry-After is audited: after a 429 with ``Retry-After: T`` for a key (from any fault), a request for the
same key arriving more than 50 ms before T seconds have passed since the 429 was sent is a violation.
Clients that honour Retry-After cause none; the chaos suite asserts so.

Control API (JSON; not subject to faults):

    GET  /_sandbox/requests    {"requests": [...]} accepted requests in arrival order, each
                               {"path", "body", "idempotency_key", "received_at", "attempt", "user_agent",
                               "org_token"}
    GET  /_sandbox/count       {"count": n} accepted requests
    GET  /_sandbox/duplicates  {"duplicates": {key: n}} keys accepted more than once
    GET  /_sandbox/attempts    {"attempts": [...]} every learn request seen, each
                               {"path", "idempotency_key", "received_at", "attempt", "outcome"}
                               where outcome is the status sent, "hang" or "drop"
    GET  /_sandbox/violations  {"violations": [...]} Retry-After violations in arrival order, each
                               {"path", "idempotency_key", "received_at", "attempt", "retry_after",
                               "early_s"} (early_s = how long before the allowed time it arrived)
    GET  /_sandbox/stats       {"accepted", "seen", "connections_opened", "connections_open",
                               "retry_after_violations"}
    GET  /_sandbox/faults      the faults in force (outage_seconds = what is left of the outage)
    POST /_sandbox/faults      change the given faults, e.g. {"error_rate": 0.2}; 400 on an unknown one.
                               Only a change naming outage_seconds starts (or, with 0, ends) an outage;
                               one naming rate_limit_per_second or rate_limit_burst refills the bucket
    GET  /_sandbox/tokens      {"org_tokens": [...]} the org tokens accepted now
    POST /_sandbox/tokens      {"org_tokens": [...]} accept these instead, as a rotation in Wigzo does
    POST /_sandbox/reset       forget all requests, attempts and violations, restore the faults and org tokens
                               the sandbox started with (restarting their outage and a full bucket)

Faults (see `Faults`) apply to learn routes in this order: unauthorized, outage, fail_first_attempts,
rate limit, hang, drop, throttle, error; then the token and body checks and reject_event_names. Latency
delays every answer. The rate limit is a token bucket: rate_limit_per_second tokens a second, at most
rate_limit_burst saved up (0: one second's worth, at least 1); a request that finds no token is
answered 429 with Retry-After = whole seconds until one is available (at least 1).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import parse_qsl

import orjson

from pipeline.model import PipelineError

LEARN_PATHS = frozenset({"/rest/v1/learn/identify", "/rest/v1/learn/event"})
HANG, DROP = "hang", "drop"
RETRY_AFTER_SLACK_S = 0.05  # clock and scheduling noise a client's retry may arrive early by without a violation


class SandboxError(PipelineError):
    """The sandbox cannot do what was asked: a control request it refused (e.g. an unknown fault), or a server
    it cannot start (no org token, unusable TLS files); the message says which."""


def _fault(default: Any, help_text: str) -> Any:
    """A `Faults` field; `help_text` documents it here and is its command-line flag's help."""
    return field(default=default, metadata={"help": help_text})


@dataclass(slots=True)
class Faults:
    """Misbehaviour to inject. Rates are shares of learn requests, 0.0 to 1.0."""

    latency_ms: float = _fault(0.0, "delay every answer by this many milliseconds")
    latency_jitter_ms: float = _fault(0.0, "add a random delay up to this many milliseconds")
    error_rate: float = _fault(0.0, "share of requests answered 500 or 503 (half each)")
    throttle_rate: float = _fault(0.0, "share of requests answered 429 with Retry-After")
    retry_after_s: int = _fault(1, "the Retry-After seconds sent with the 429s of throttle_rate and fail_with")
    hang_rate: float = _fault(0.0, "share of requests never answered (held until the client leaves)")
    drop_rate: float = _fault(0.0, "share of requests whose connection is closed without an answer")
    outage_seconds: float = _fault(0.0, "answer everything 503 for this many seconds from when it is set")
    rate_limit_per_second: float = _fault(0.0, "token bucket rate limit: requests allowed per second, beyond it "
                                               "429; 0: no rate limit")
    rate_limit_burst: int = _fault(0, "tokens the rate limit saves up; 0: one second's worth (at least 1)")
    unauthorized: bool = _fault(False, "answer everything 401, as if the token were revoked")
    reject_event_names: tuple[str, ...] = _fault((), "answer events with these eventName values 400")
    fail_first_attempts: int = _fault(0, "answer each idempotency key's first N attempts with fail_with")
    fail_with: str = _fault("503", 'the answer for fail_first_attempts: an HTTP status, "hang" or "drop"')

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
class Request:
    """One HTTP request as the server parsed it (header names lower-cased)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer a request; the server frames it as HTTP."""

    status: int
    payload: bytes
    extra_headers: str = ""
    retry_after: int | None = None  # sent as Retry-After, and audited for the key it answered


class TokenBucket:
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


def error_answer(status: int, message: str, field: str = "") -> Answer:
    payload: dict[str, str] = {"status": "error", "error": message}
    if field:
        payload["field"] = field
    return Answer(status, orjson.dumps(payload))


SUCCESS = Answer(200, orjson.dumps({"status": "success", "message": "accepted"}))


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


class Wigzo:
    """The sandbox's state and request handling; lives on the event-loop thread, so needs no locks."""

    def __init__(self, org_tokens: tuple[str, ...], api_token: str | None, faults: Faults) -> None:
        self.initial_org_tokens = org_tokens
        self.api_token = api_token
        self.initial_faults = faults.validated()
        self.rng = random.Random()
        self.connections_opened = 0
        self.connections_open = 0
        self.reset()

    def reset(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.accepted_per_key: Counter[str] = Counter()
        self.retry_not_before: dict[str, tuple[float, int]] = {}  # key -> (monotonic time, the Retry-After sent)
        self.violations: list[dict[str, Any]] = []
        self.org_tokens = self.initial_org_tokens
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
            self.bucket = TokenBucket(rate, faults.rate_limit_burst or max(1.0, rate), now) if rate else None

    def answer(self, request: Request) -> tuple[Answer | str, float]:
        """The answer (or HANG / DROP) and how many seconds to delay it."""
        if request.path.startswith("/_sandbox/"):
            return self.control(request), 0.0
        if request.path not in LEARN_PATHS:
            return error_answer(404, f"no route {request.path}"), 0.0
        if request.method != "POST":
            return Answer(405, orjson.dumps({"status": "error", "error": "use POST"}), "Allow: POST\r\n"), 0.0
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
        if isinstance(outcome, Answer) and outcome.retry_after is not None and key:
            # the client's clock starts when it gets the answer, after the injected latency
            self.retry_not_before[key] = (monotonic + delay + outcome.retry_after, outcome.retry_after)
        if isinstance(verdict, dict):
            body = verdict
            self.accepted_per_key[key] += 1
            self.accepted.append({"path": request.path, "body": body, "idempotency_key": key, "received_at": now,
                                  "attempt": attempt, "user_agent": request.headers.get("user-agent", ""),
                                  "org_token": dict(parse_qsl(request.query)).get("org_token", "")})
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

    def learn(self, request: Request, faults: Faults, attempt: int, now: float) -> Answer | str | dict[str, Any]:
        """The failure answer (or HANG / DROP), or the parsed body when the request is accepted."""
        if faults.unauthorized:
            return error_answer(401, "the token was rejected")
        if now < self.outage_until:
            return error_answer(503, "Wigzo is down for maintenance")
        if attempt <= faults.fail_first_attempts:
            return self.failure(faults.fail_with, faults)
        if self.bucket is not None and (wait := self.bucket.take(now)):
            # wait > 0, so Retry-After is at least 1
            return replace(error_answer(429, "rate limit exceeded"), retry_after=math.ceil(wait))
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
            return error_answer(401, "org_token is required", "org_token")
        if params["org_token"] not in self.org_tokens:
            return error_answer(401, "org_token is invalid", "org_token")
        if self.api_token is not None and params.get("token") != self.api_token:
            return error_answer(401, "token is missing or invalid", "token")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return error_answer(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return error_answer(400, "the body must be a JSON object")
        problem = CHECKS[request.path](body)
        if problem:
            return error_answer(400, problem[1], problem[0])
        if faults.reject_event_names and body.get("eventName") in faults.reject_event_names:
            return error_answer(400, f"eventName {body['eventName']!r} is rejected by a strict rule", "eventName")
        return body

    @staticmethod
    def failure(kind: str, faults: Faults) -> Answer | str:
        if kind in (HANG, DROP):
            return kind
        status = int(kind)
        answer = error_answer(status, f"injected HTTP {status}")
        if status == 429:
            return replace(answer, retry_after=faults.retry_after_s)
        return answer

    def control(self, request: Request) -> Answer:
        route = (request.method, request.path)
        if route == ("GET", "/_sandbox/requests"):
            return Answer(200, orjson.dumps({"requests": self.accepted}))
        if route == ("GET", "/_sandbox/count"):
            return Answer(200, orjson.dumps({"count": len(self.accepted)}))
        if route == ("GET", "/_sandbox/duplicates"):
            duplicates = {key: n for key, n in self.accepted_per_key.items() if n > 1}
            return Answer(200, orjson.dumps({"duplicates": duplicates}))
        if route == ("GET", "/_sandbox/attempts"):
            return Answer(200, orjson.dumps({"attempts": self.seen}))
        if route == ("GET", "/_sandbox/violations"):
            return Answer(200, orjson.dumps({"violations": self.violations}))
        if route == ("GET", "/_sandbox/stats"):
            return Answer(200, orjson.dumps({"accepted": len(self.accepted), "seen": len(self.seen),
                                              "connections_opened": self.connections_opened,
                                              "connections_open": self.connections_open,
                                              "retry_after_violations": len(self.violations)}))
        if route == ("GET", "/_sandbox/faults"):
            return Answer(200, orjson.dumps(self.current_faults()))
        if route == ("POST", "/_sandbox/faults"):
            try:
                changes = orjson.loads(request.body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("send a JSON object of faults")
                self.set_faults(self.faults.updated(changes), changes.keys())
            except (ValueError, orjson.JSONDecodeError) as exc:
                return error_answer(400, str(exc))
            return Answer(200, orjson.dumps(self.current_faults()))
        if route == ("GET", "/_sandbox/tokens"):
            return Answer(200, orjson.dumps({"org_tokens": list(self.org_tokens)}))
        if route == ("POST", "/_sandbox/tokens"):
            try:
                tokens = orjson.loads(request.body or b"{}").get("org_tokens")
            except (AttributeError, orjson.JSONDecodeError):
                tokens = None
            if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
                return error_answer(400, 'send {"org_tokens": [...]}: one or more non-empty strings')
            self.org_tokens = tuple(tokens)
            return Answer(200, orjson.dumps({"org_tokens": tokens}))
        if route == ("POST", "/_sandbox/reset"):
            self.reset()
            return Answer(200, orjson.dumps({"status": "reset"}))
        return error_answer(404, f"no control route {request.method} {request.path}")

    def current_faults(self) -> dict[str, Any]:
        faults = asdict(self.faults)
        faults["outage_seconds"] = max(0.0, self.outage_until - time.monotonic())
        return faults
