"""Delivers WigzoRequests over HTTP without losing events or flooding the dead-letter topic.

One pooled `requests.Session` is shared by the consumer's worker threads. Each `deliver` call retries
inside until the event is delivered, is judged permanently unacceptable, exhausts its own retry budget
while Wigzo serves others, or `stop` is set. Outages and rejected tokens hold every event back (the
consumer sees `accepting_work() == False` and pauses) instead of dead-lettering them. The rules live in
`pipeline.wigzo.policy`; this module is the I/O and the locking around them.
"""

from __future__ import annotations

import http.cookiejar
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from pipeline import __version__
from pipeline.config import ConfigError, Settings
from pipeline.model import (
    Aborted,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    Rejection,
    Scrubber,
    WigzoRequest,
    utc_iso,
)
from pipeline.wigzo.policy import (
    CircuitBreaker,
    ConcurrencyLimit,
    DeliveryPolicy,
    Health,
    PermitKind,
    RetryBudget,
    Transition,
    Verdict,
    classify_exception,
    parse_retry_after,
    retry_delay,
)

log = logging.getLogger("pipeline.wigzo.client")

USER_AGENT = f"segment-wigzo/{__version__} python-requests/{requests.__version__}"
SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Verdict
    status: int | None
    label: str          # "503" or "ReadTimeout": one word for the history line
    detail: str         # scrubbed body or exception snippet
    retry_after: float | None = None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


def _failed(rejection: Rejection, failures: list[tuple[float, str]]) -> DeliveryFailed:
    """Every attempt failed, so the attempt count is the history's length."""
    history = tuple(f"{utc_iso(wall)} {label}" for wall, label in failures)
    return DeliveryFailed(rejection, len(failures), failures[0][0], failures[-1][0], history)


class WigzoClient:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 session: requests.Session | None = None, policy: DeliveryPolicy | None = None) -> None:
        base = urlsplit(settings.wigzo_base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ConfigError(f"WIGZO_BASE_URL={settings.wigzo_base_url!r} is invalid: "
                              "write it as https://host[:port], e.g. https://app.wigzo.com")
        self._base_url = settings.wigzo_base_url.rstrip("/")
        self._settings = settings
        self._policy = policy or DeliveryPolicy(retry_statuses=settings.retry_statuses)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._owns_session = session is None
        self._session = session or self._new_session(settings)
        self._scrub = Scrubber((settings.wigzo_org_token, settings.wigzo_api_token))
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._in_flight = 0
        self._breaker = CircuitBreaker(self._policy, self._rng)
        self._limit = ConcurrencyLimit(self._policy, settings.max_in_flight)

    @staticmethod
    def _new_session(settings: Settings) -> requests.Session:
        session = requests.Session()
        # requests' default pool keeps 10 connections per host and discards the rest after each use
        adapter = HTTPAdapter(pool_maxsize=settings.max_in_flight, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.verify = settings.ca_bundle or True
        session.headers["User-Agent"] = USER_AGENT
        # an API client needs no cookies, and a shared jar is the one thread-unsafe part of a Session
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return session

    @property
    def state(self) -> str:
        with self._lock:
            if self._breaker.state is not Health.HEALTHY:
                return self._breaker.state.value
            return "throttled" if self._limit.throttled else "healthy"

    def accepting_work(self) -> bool:
        with self._lock:
            return self._breaker.state is Health.HEALTHY

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def deliver(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        try:
            body = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:
            wall = self._wall_clock()
            return DeliveryFailed(Rejection("delivery", "UnserializableBody", f"the request body is not JSON: {exc}"),
                                  0, wall, wall, ())
        budget = RetryBudget(self._settings.max_attempts, self._settings.retry_budget_seconds)
        failures: list[tuple[float, str]] = []  # (wall-clock time, label) per failed attempt
        attempts = retries = 0
        with self._lock:
            served_before = self._breaker.served
        while True:
            probe = None if stop.is_set() else self._await_turn(stop)
            if probe is None:
                return Aborted(attempts)
            if not self._take_slot(stop):
                if probe:
                    with self._lock:
                        self._breaker.cancel_probe()
                return Aborted(attempts)
            sent_at = self._clock()
            try:
                attempt = self._send(request, body)
            finally:
                self._free_slot()
            attempts += 1
            now, wall = self._clock(), self._wall_clock()
            with self._lock:
                transition = self._breaker.record(attempt.verdict, sent_at, now, probe, attempt.label)
                window = self._breaker.failures_in_window()
                self._adjust_limit(attempt.verdict, now)
                served_now = self._breaker.served
                unhealthy = self._breaker.unhealthy_seconds(now)
            if transition:
                self._log_transition(transition, attempt, window)
            if attempt.verdict is Verdict.DELIVERED:
                return Delivered(attempt.status or 0, attempts)
            failures.append((wall, attempt.label))
            if attempt.verdict is Verdict.PERMANENT:
                error_class = f"HttpStatus{attempt.status}" if attempt.status else attempt.label
                return _failed(Rejection("delivery", error_class, f"Wigzo answered {attempt.label}: {attempt.detail}",
                                         http_status=attempt.status), failures)
            log.debug("attempt %d of %s failed: %s", attempts, request.path, attempt.label)
            if attempt.verdict is Verdict.AUTH:
                continue  # the gate holds every event until a probe gets through
            if attempt.verdict is Verdict.RETRY and budget.spend(served_now > served_before, now, unhealthy):
                spent = budget.healthy_seconds(now, unhealthy)
                return _failed(Rejection(
                    "delivery", "RetryBudgetExhausted",
                    f"gave up after {attempts} attempts over {spent:.1f}s while Wigzo served other events; "
                    f"last answer {attempt.label}: {attempt.detail}", http_status=attempt.status), failures)
            served_before = served_now
            retries += 1
            if stop.wait(retry_delay(self._policy, retries, attempt.retry_after, self._rng)):
                return Aborted(attempts)

    def _await_turn(self, stop: threading.Event) -> bool | None:
        """Wait while the circuit is open or the token rejected; True if this caller is the probe."""
        while True:
            with self._lock:
                permit = self._breaker.permit(self._clock())
            if permit.kind is not PermitKind.WAIT:
                return permit.kind is PermitKind.PROBE
            if stop.wait(min(permit.wait, self._policy.gate_poll)):
                return None

    def _take_slot(self, stop: threading.Event) -> bool:
        with self._slot_freed:
            while self._in_flight >= self._limit.allowed:
                if stop.is_set():
                    return False
                self._slot_freed.wait(self._policy.gate_poll)
            self._in_flight += 1
            return True

    def _free_slot(self) -> None:
        with self._slot_freed:
            self._in_flight -= 1
            self._slot_freed.notify()

    def _adjust_limit(self, verdict: Verdict, now: float) -> None:
        if verdict is Verdict.THROTTLED:
            was_throttled = self._limit.throttled
            if self._limit.on_throttled(now) and not was_throttled:
                log.warning("Wigzo is throttling (HTTP 429): lowering concurrency to %d requests in flight",
                            self._limit.allowed)
        elif verdict is Verdict.DELIVERED:
            self._limit.on_success()

    def _send(self, request: WigzoRequest, body: bytes) -> _Attempt:
        headers = {"Content-Type": "application/json", **dict(request.headers)}
        try:
            response = self._session.request(
                request.method, self._base_url + request.path, params=request.query, data=body, headers=headers,
                timeout=(self._settings.connect_timeout, self._settings.read_timeout), allow_redirects=False)
        except OSError as exc:  # requests' exceptions are OSErrors too
            return _Attempt(classify_exception(exc), None, type(exc).__name__, self._scrub(_one_line(str(exc))))
        verdict = self._policy.classify_status(response.status_code)
        if verdict is Verdict.DELIVERED:  # the hot path: a success's body and headers tell us nothing more
            return _Attempt(verdict, response.status_code, str(response.status_code), "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
        return _Attempt(verdict, response.status_code, str(response.status_code),
                        self._scrub(_one_line(response.text)), retry_after)

    def _log_transition(self, transition: Transition, attempt: _Attempt, window: tuple[int, int]) -> None:
        after, before = transition.after, transition.before
        if after is Health.AUTH_FAILED:
            log.error("the Wigzo token was rejected (HTTP %s): check WIGZO_ORG_TOKEN / WIGZO_API_TOKEN; "
                      "delivery is paused and retried slowly until Wigzo accepts it", attempt.status)
        elif after is Health.CIRCUIT_OPEN:
            failed, seen = window
            log.warning("Wigzo is failing (%d of the last %d requests, latest %s: %s): delivery paused, "
                        "probing with backoff; nothing is dead-lettered meanwhile",
                        failed, seen, attempt.label, attempt.detail[:120])
        elif before is Health.AUTH_FAILED:
            log.info("Wigzo accepts the token again: delivery resumed")
        else:
            log.info("Wigzo answers again: circuit closed, delivery resumed")
