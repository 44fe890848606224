"""Delivers WigzoRequests over HTTP without losing events or flooding the dead-letter topic.

One transport (by default a pooled `requests.Session`, see `pipeline.wigzo.transport`) is shared by the
consumer's worker threads. Each `deliver` call retries inside until the event is delivered, is judged
permanently unacceptable, exhausts its own retry budget while Wigzo serves others, or `stop` is set. Outages
and rejected tokens hold every event back (the consumer sees `accepting_work() == False` and pauses) instead
of dead-lettering them. The rules live in `pipeline.wigzo.policy`; this module is the locking around them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

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
from pipeline.wigzo.transport import USER_AGENT as USER_AGENT  # re-exported: the name callers know
from pipeline.wigzo.transport import RequestsTransport, Transport, TransportError

log = logging.getLogger("pipeline.wigzo.client")

SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Verdict
    status: int | None
    label: str          # "503" or "ReadTimeout": one word for the history line
    detail: str         # scrubbed body or exception snippet
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Seen:
    """The shared state just after an attempt was recorded, for the retry budget's decision."""

    now: float
    wall: float
    served: int        # answers from Wigzo that proved it works, to any caller
    unhealthy: float   # seconds spent with the circuit open or the token rejected, in total


@dataclass(slots=True)
class _Run:
    """One `deliver` call's own progress."""

    budget: RetryBudget
    served_before: int  # the breaker's `served` when this event last failed (or started)
    attempts: int = 0
    retries: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (wall-clock time, label) per failed attempt

    def failed(self, error_class: str, reason: str, status: int | None) -> DeliveryFailed:
        """Every attempt failed, so the attempt count is the history's length."""
        history = tuple(f"{utc_iso(wall)} {label}" for wall, label in self.failures)
        return DeliveryFailed(Rejection("delivery", error_class, reason, http_status=status), len(self.failures),
                              self.failures[0][0], self.failures[-1][0], history)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


class WigzoClient:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 policy: DeliveryPolicy | None = None, transport: Transport | None = None) -> None:
        base = urlsplit(settings.wigzo_base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ConfigError(f"WIGZO_BASE_URL={settings.wigzo_base_url!r} is invalid: "
                              "write it as https://host[:port], e.g. https://app.wigzo.com")
        self._base_url = settings.wigzo_base_url.rstrip("/")
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._settings = settings
        self._policy = policy or DeliveryPolicy(retry_statuses=settings.retry_statuses)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._owned_transport: RequestsTransport | None = None  # close() closes only what this client opened
        if transport is None:
            transport = self._owned_transport = RequestsTransport(settings.max_in_flight, settings.ca_bundle)
        self._transport = transport
        self._scrub = Scrubber((settings.wigzo_org_token, settings.wigzo_api_token))
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._in_flight = 0
        self._breaker = CircuitBreaker(self._policy, self._rng)
        self._limit = ConcurrencyLimit(self._policy, settings.max_in_flight)

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
        if self._owned_transport is not None:
            self._owned_transport.close()

    def deliver(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        """Admit, attempt, decide; again after the backoff the decision asks for, until it is final or stop is set."""
        try:
            body = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:
            wall = self._wall_clock()
            return DeliveryFailed(Rejection("delivery", "UnserializableBody", f"the request body is not JSON: {exc}"),
                                  0, wall, wall, ())
        run = _Run(RetryBudget(self._settings.max_attempts, self._settings.retry_budget_seconds), self._served())
        backoff: float | None = None
        while (probe := self._admit(stop, backoff)) is not None:
            attempt, seen = self._attempt(request, body, probe)
            run.attempts += 1
            decision = self._decide(request, attempt, seen, run)
            if isinstance(decision, (Delivered, DeliveryFailed)):
                return decision
            backoff = decision
        return Aborted(run.attempts)

    def _served(self) -> int:
        with self._lock:
            return self._breaker.served

    def _admit(self, stop: threading.Event, backoff: float | None) -> bool | None:
        """Sit out the backoff, the breaker's gate and the concurrency limit, holding a slot when done.

        True if this caller is the breaker's probe; None when stop was set first, and then nothing is held.
        """
        if (backoff is not None and stop.wait(backoff)) or stop.is_set():
            return None
        probe = self._await_permit(stop)
        return probe if probe is not None and self._take_slot(stop, probe) else None

    def _await_permit(self, stop: threading.Event) -> bool | None:
        """Wait while the circuit is open or the token rejected; True if this caller is the probe."""
        while True:
            with self._lock:
                permit = self._breaker.permit(self._clock())
            if permit.kind is not PermitKind.WAIT:
                return permit.kind is PermitKind.PROBE
            if stop.wait(min(permit.wait, self._policy.gate_poll)):
                return None

    def _take_slot(self, stop: threading.Event, probe: bool) -> bool:
        """Wait for room under the concurrency limit; a caller that gives up hands its probe back to the others."""
        with self._slot_freed:
            while self._in_flight >= self._limit.allowed:
                if stop.is_set():
                    if probe:
                        self._breaker.cancel_probe()
                    return False
                self._slot_freed.wait(self._policy.gate_poll)
            self._in_flight += 1
            return True

    def _free_slot(self) -> None:
        with self._slot_freed:
            self._in_flight -= 1
            self._slot_freed.notify()

    def _attempt(self, request: WigzoRequest, body: bytes, probe: bool) -> tuple[_Attempt, _Seen]:
        """Send once in the slot `_admit` took, free it, and record the answer where every caller sees it."""
        sent_at = self._clock()
        try:
            attempt = self._send(request, body)
        finally:
            self._free_slot()
        now, wall = self._clock(), self._wall_clock()
        with self._lock:
            transition = self._breaker.record(attempt.verdict, sent_at, now, probe, attempt.label)
            window = self._breaker.failures_in_window()
            self._adjust_limit(attempt.verdict, now)
            seen = _Seen(now, wall, self._breaker.served, self._breaker.unhealthy_seconds(now))
        if transition:
            self._log_transition(transition, attempt, window)
        return attempt, seen

    def _decide(self, request: WigzoRequest, attempt: _Attempt, seen: _Seen,
                run: _Run) -> Delivered | DeliveryFailed | float | None:
        """The final result, or the seconds to back off before the next attempt (None: no backoff, the gate
        alone holds the event while the token is rejected)."""
        if attempt.verdict is Verdict.DELIVERED:
            return Delivered(attempt.status or 0, run.attempts)
        run.failures.append((seen.wall, attempt.label))
        if attempt.verdict is Verdict.PERMANENT:
            error_class = f"HttpStatus{attempt.status}" if attempt.status else attempt.label
            return run.failed(error_class, f"Wigzo answered {attempt.label}: {attempt.detail}", attempt.status)
        log.debug("attempt %d of %s failed: %s", run.attempts, request.path, attempt.label)
        if attempt.verdict is Verdict.AUTH:
            return None  # the gate holds every event until a probe gets through
        if attempt.verdict is Verdict.RETRY and run.budget.spend(seen.served > run.served_before, seen.now,
                                                                 seen.unhealthy):
            spent = run.budget.healthy_seconds(seen.now, seen.unhealthy)
            return run.failed("RetryBudgetExhausted",
                              f"gave up after {run.attempts} attempts over {spent:.1f}s while Wigzo served other "
                              f"events; last answer {attempt.label}: {attempt.detail}", attempt.status)
        run.served_before = seen.served
        run.retries += 1
        return retry_delay(self._policy, run.retries, attempt.retry_after, self._rng)

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
            response = self._transport.send(request.method, self._base_url + request.path, params=request.query,
                                            body=body, headers=headers, timeout=self._timeout)
        except TransportError as exc:
            return _Attempt(classify_exception(exc), None, exc.label, self._scrub(_one_line(exc.message)))
        verdict = self._policy.classify_status(response.status)
        if verdict is Verdict.DELIVERED:  # the hot path: a success's body and headers tell us nothing more
            return _Attempt(verdict, response.status, str(response.status), "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
        return _Attempt(verdict, response.status, str(response.status), self._scrub(_one_line(response.text)),
                        retry_after)

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
