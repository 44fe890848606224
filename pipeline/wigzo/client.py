"""Delivers WigzoRequests over HTTP without losing events or flooding the dead-letter topic.

One transport (by default a pooled `requests.Session`, see `pipeline.wigzo.transport`) is shared by the
consumer's worker threads. A request's `Delivery` is resumable: each `step` makes at most one attempt and
returns the final result (delivered, judged permanently unacceptable, out of its own retry budget while Wigzo
serves others, or aborted because `stop` is set) or how long to wait before stepping again, so a backoff or a
Retry-After holds no thread (`pipeline.kafka.executor` re-runs the step on a timer). `deliver` is the blocking
loop around it. Outages, rejected tokens and a broken configuration hold every event back (the consumer sees
`accepting_work() == False` and pauses) instead of dead-lettering them. The rules live in
`pipeline.wigzo.policy`; this module is the locking around them, and the client's metrics.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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
    Wait,
    WigzoRequest,
    utc_iso,
)
from pipeline.telemetry.metrics import (
    AUTH_FAILED,
    CIRCUIT_OPEN,
    CONCURRENCY_LIMIT,
    HTTP_DURATION,
    HTTP_REQUESTS,
    IN_FLIGHT,
    MISCONFIGURED,
    RETRIES,
    status_class,
)
from pipeline.wigzo.policy import (
    CircuitBreaker,
    ConcurrencyLimit,
    DeliveryPolicy,
    Failure,
    Health,
    PermitKind,
    RetryBudget,
    Transition,
    Verdict,
    classify_exception,
    parse_retry_after,
    retry_delay,
)
from pipeline.wigzo.transport import (
    USER_AGENT as USER_AGENT,  # re-exported: the name callers know
)
from pipeline.wigzo.transport import RequestsTransport, Transport, TransportError

log = logging.getLogger("pipeline.wigzo.client")

SNIPPET_CHARS = 200
_BAD_BASE_URL_LABELS = frozenset({"InvalidURL", "InvalidSchema", "MissingSchema"})


@dataclass(frozen=True, slots=True)
class _Attempt:
    verdict: Verdict
    status: int | None
    label: str          # "503" or "ReadTimeout": one word for the history line
    detail: str         # scrubbed body or exception snippet
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class _Seen:
    """The shared state just after an attempt was recorded, for the decision on the event."""

    now: float
    wall: float
    served: int        # answers from Wigzo that proved it works, to any caller
    unhealthy: float   # seconds spent with delivery paused, in total
    held: bool         # a permanent failure that is the configuration's: the event waits instead


class Delivery:
    """One request's way to a final result, one attempt per `step`.

    Between steps it keeps what the retry budget and the dead letter need: attempts, failures with their
    times, and the budget itself; so resuming on another thread, later, decides exactly as one loop would.
    """

    def __init__(self, client: WigzoClient, request: WigzoRequest, body: bytes | DeliveryFailed,
                 budget: RetryBudget, served_before: int) -> None:
        self.request = request
        self.body = body  # or the failure to serialize it: final at the first step
        self.budget = budget
        self.served_before = served_before  # the breaker's `served` when this event last failed (or started)
        self.attempts = 0
        self.retries = 0
        self.failures: list[tuple[float, str]] = []  # (wall-clock time, label) per failed attempt
        self._client = client

    def step(self, stop: threading.Event) -> DeliveryResult | Wait:
        """At most one attempt; Aborted once `stop` is set, without sending."""
        return self._client._step(self, stop)

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
            # requests that hang stop counting against the limit, so up to twice it can be on the wire: pool
            # them all, or each late answer's connection is discarded with a warning
            transport = self._owned_transport = RequestsTransport(2 * settings.max_in_flight, settings.ca_bundle)
        self._transport = transport
        self._scrub = Scrubber(settings.secrets())
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._tokens = itertools.count()
        # requests on the wire that count against the limit, oldest first: their send time by slot
        self._sending: OrderedDict[int, float] = OrderedDict()
        self._stall_warning_due = False  # a stall lowered the limit from its maximum: warn once the lock is free
        self._breaker = CircuitBreaker(self._policy, self._rng, settings.systemic_failure_threshold)
        self._limit = ConcurrencyLimit(self._policy, settings.max_in_flight)
        self._resumed = threading.Event()  # set when delivery resumes; a new one for every pause
        self._resumed.set()
        self._problem = ""
        self._published_limit = self._limit.allowed
        CONCURRENCY_LIMIT.set(self._published_limit)
        self._publish_health(Health.HEALTHY)

    @property
    def state(self) -> str:
        with self._lock:
            if self._breaker.state is not Health.HEALTHY:
                return self._breaker.state.value
            return "throttled" if self._limit.throttled else "healthy"

    @property
    def problem(self) -> str:
        """Why delivery is paused, in the words of the log line that said so; empty while it is not."""
        with self._lock:
            return self._problem

    def accepting_work(self) -> bool:
        with self._lock:
            return self._breaker.state is Health.HEALTHY

    def close(self) -> None:
        if self._owned_transport is not None:
            self._owned_transport.close()

    def delivery(self, request: WigzoRequest) -> Delivery:
        """The request's resumable delivery; nothing is sent until its first `step`."""
        budget = RetryBudget(self._settings.max_attempts, self._settings.retry_budget_seconds)
        try:
            body: bytes | DeliveryFailed = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:
            wall = self._wall_clock()
            body = DeliveryFailed(Rejection("delivery", "UnserializableBody", f"the request body is not JSON: {exc}"),
                                  0, wall, wall, ())
        with self._lock:
            served = self._breaker.served
        return Delivery(self, request, body, budget, served)

    def deliver(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        """Step until the result is final or stop is set, waiting on this thread in between."""
        delivery = self.delivery(request)
        while isinstance(outcome := delivery.step(stop), Wait):
            self._sleep(outcome, stop)
        return outcome

    def _sleep(self, wait: Wait, stop: threading.Event) -> None:
        if wait.resumed is None:
            if wait.seconds > 0:
                stop.wait(wait.seconds)
            return
        until = self._clock() + wait.seconds
        while not wait.resumed.is_set() and (left := until - self._clock()) > 0:
            if stop.wait(min(left, self._policy.gate_poll)):
                return

    def _step(self, delivery: Delivery, stop: threading.Event) -> DeliveryResult | Wait:
        """Admit, attempt, decide."""
        if stop.is_set():
            return Aborted(delivery.attempts)
        if isinstance(delivery.body, DeliveryFailed):
            return delivery.body
        admitted = self._admit(stop)
        if isinstance(admitted, Wait):
            return admitted
        probe, slot = admitted
        attempt, seen = self._attempt(delivery.request, delivery.body, probe, slot)
        delivery.attempts += 1
        return self._decide(delivery, attempt, seen)

    def _admit(self, stop: threading.Event) -> tuple[bool, int] | Wait:
        """Pass the breaker's gate and take a slot under the concurrency limit: (whether this is the probe, the
        slot), or how long to wait first."""
        with self._lock:
            permit = self._breaker.permit(self._clock())
            if permit.kind is PermitKind.WAIT:
                return Wait(permit.wait, self._resumed)
        probe = permit.kind is PermitKind.PROBE
        slot = self._take_slot(stop, probe)
        return Wait(0.0) if slot is None else (probe, slot)

    def _take_slot(self, stop: threading.Event, probe: bool) -> int | None:
        """Room under the concurrency limit, waited for at most one gate_poll: a caller that would wait longer
        steps again later (its thread may run other work meanwhile) and hands its probe back to the others."""
        with self._slot_freed:
            if self._count_sending() >= self._limit.allowed:
                self._slot_freed.wait(self._policy.gate_poll)
                if stop.is_set() or self._count_sending() >= self._limit.allowed:
                    if probe:
                        self._breaker.cancel_probe()
                    return None
            slot = next(self._tokens)
            self._sending[slot] = self._clock()
            lowered, self._stall_warning_due = self._stall_warning_due, False
        IN_FLIGHT.inc()
        if lowered:
            log.warning("a request to Wigzo has had no answer for %.0f s: lowering concurrency to %d requests in "
                        "flight; requests still hanging no longer count against it", self._policy.stall_after,
                        self._limit.allowed)
        return slot

    def _count_sending(self) -> int:
        """Requests on the wire that count against the limit (lock held): those sent within stall_after. A
        request Wigzo leaves hanging keeps its connection until the read timeout but not its place."""
        now = self._clock()
        stalled = False
        while self._sending:
            slot, sent_at = next(iter(self._sending.items()))
            if now - sent_at < self._policy.stall_after:
                break
            del self._sending[slot]
            stalled = True
        if stalled:
            was_throttled = self._limit.throttled
            if self._limit.on_stall(now):
                self._publish_limit()
                self._stall_warning_due = self._stall_warning_due or not was_throttled
        return len(self._sending)

    def _free_slot(self, slot: int) -> None:
        with self._slot_freed:
            self._sending.pop(slot, None)  # gone already if it stalled
            self._slot_freed.notify()
        IN_FLIGHT.dec()

    def _attempt(self, request: WigzoRequest, body: bytes, probe: bool, slot: int) -> tuple[_Attempt, _Seen]:
        """Send once in the slot `_admit` took, free it, and record the answer where every caller sees it."""
        sent_at = self._clock()
        try:
            attempt = self._send(request, body)
        finally:
            self._free_slot(slot)
        now, wall = self._clock(), self._wall_clock()
        HTTP_REQUESTS.labels(status_class(attempt.status)).inc()
        HTTP_DURATION.observe(now - sent_at)
        failure = None
        if attempt.verdict is Verdict.PERMANENT:
            failure = Failure(attempt.status, attempt.label, request.path if attempt.status is not None else "")
        with self._lock:
            transition = self._breaker.record(attempt.verdict, sent_at, now, probe, attempt.label, failure)
            held = self._breaker.holds(attempt.verdict, failure)
            window = self._breaker.failures_in_window()
            lowered = self._adjust_limit(attempt.verdict, sent_at, now)
            seen = _Seen(now, wall, self._breaker.served, self._breaker.unhealthy_seconds(now), held)
            if transition:
                message = self._describe(transition, attempt, window, failure)
                self._problem = message if transition.after is not Health.HEALTHY else ""
                if transition.after is Health.HEALTHY:
                    self._resumed.set()
                elif transition.before is Health.HEALTHY:
                    self._resumed = threading.Event()
        if lowered:
            log.warning("Wigzo is throttling (%d%% or more of the last %d answers were HTTP 429): lowering "
                        "concurrency to %d requests in flight", round(100 * self._policy.throttle_ratio),
                        self._policy.throttle_window, self._limit.allowed)
        if transition:
            self._publish_health(transition.after)
            level = {Health.MISCONFIGURED: logging.ERROR, Health.AUTH_FAILED: logging.ERROR,
                     Health.CIRCUIT_OPEN: logging.WARNING}.get(transition.after, logging.INFO)
            log.log(level, "%s", message)
        return attempt, seen

    def _decide(self, delivery: Delivery, attempt: _Attempt, seen: _Seen) -> Delivered | DeliveryFailed | Wait:
        """The final result, or how long to wait before the next attempt (none when the gate alone holds the
        event: the token is rejected or the configuration broken, and a probe must get through first)."""
        if attempt.verdict is Verdict.DELIVERED:
            return Delivered(attempt.status or 0, delivery.attempts)
        delivery.failures.append((seen.wall, attempt.label))
        if attempt.verdict is Verdict.PERMANENT and not seen.held:
            error_class = f"HttpStatus{attempt.status}" if attempt.status else attempt.label
            return delivery.failed(error_class, f"Wigzo answered {attempt.label}: {attempt.detail}", attempt.status)
        log.debug("attempt %d of %s failed: %s", delivery.attempts, delivery.request.path, attempt.label)
        if seen.held or attempt.verdict is Verdict.AUTH:
            RETRIES.labels("misconfigured" if seen.held else "auth").inc()
            return Wait(0.0)
        if attempt.verdict is Verdict.RETRY and delivery.budget.spend(seen.served > delivery.served_before,
                                                                      seen.now, seen.unhealthy):
            spent = delivery.budget.healthy_seconds(seen.now, seen.unhealthy)
            return delivery.failed("RetryBudgetExhausted",
                                   f"gave up after {delivery.attempts} attempts over {spent:.1f}s while Wigzo "
                                   f"served other events; last answer {attempt.label}: {attempt.detail}",
                                   attempt.status)
        delivery.served_before = seen.served
        delivery.retries += 1
        reason = ("throttled" if attempt.verdict is Verdict.THROTTLED
                  else "network" if attempt.status is None else "server_error")
        RETRIES.labels(reason).inc()
        return Wait(retry_delay(self._policy, delivery.retries, attempt.retry_after, self._rng))

    def _adjust_limit(self, verdict: Verdict, sent_at: float, now: float) -> bool:
        """Feed the answer to the concurrency limit (lock held); True when 429s lowered it from its maximum."""
        was_throttled = self._limit.throttled
        lowered = self._limit.on_answer(verdict is Verdict.THROTTLED, sent_at, now)
        if verdict is Verdict.DELIVERED:
            self._limit.on_success()
        self._publish_limit()
        return lowered and not was_throttled

    def _publish_limit(self) -> None:
        if self._limit.allowed != self._published_limit:
            self._published_limit = self._limit.allowed
            CONCURRENCY_LIMIT.set(self._published_limit)

    @staticmethod
    def _publish_health(state: Health) -> None:
        CIRCUIT_OPEN.set(state is Health.CIRCUIT_OPEN)
        AUTH_FAILED.set(state is Health.AUTH_FAILED)
        MISCONFIGURED.set(state is Health.MISCONFIGURED)

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

    def _describe(self, transition: Transition, attempt: _Attempt, window: tuple[int, int],
                  failure: Failure | None) -> str:
        """The log line for a change of state, which is also `problem` while delivery is paused."""
        after, before = transition.after, transition.before
        if after is Health.MISCONFIGURED and failure is not None:
            if failure.status is not None:
                what = f"answered {failure.status} at {failure.path}"
            else:
                what = f"failed with {failure.label}"
            return (f"the last {self._settings.systemic_failure_threshold} events were all {what} "
                    f"({attempt.detail[:120]}): {self._hint(failure)}; delivery is paused, nothing more is "
                    f"dead-lettered, probing every ~{self._policy.auth_probe_cap:.0f} s until Wigzo accepts an event")
        if after is Health.AUTH_FAILED:
            return (f"the Wigzo token was rejected (HTTP {attempt.status}): check WIGZO_ORG_TOKEN / WIGZO_API_TOKEN; "
                    "delivery is paused and retried slowly until Wigzo accepts it")
        if after is Health.CIRCUIT_OPEN:
            failed, seen = window
            return (f"Wigzo is failing ({failed} of the last {seen} requests, latest {attempt.label}: "
                    f"{attempt.detail[:120]}): delivery paused, probing with backoff; nothing is dead-lettered "
                    "meanwhile")
        if before is Health.AUTH_FAILED:
            return "Wigzo accepts the token again: delivery resumed"
        if before is Health.MISCONFIGURED:
            return "Wigzo accepts events again: delivery resumed"
        return "Wigzo answers again: circuit closed, delivery resumed"

    def _hint(self, failure: Failure) -> str:
        """What to check for a failure every event shares."""
        status = failure.status
        if status in (404, 405) or failure.label in _BAD_BASE_URL_LABELS:
            return (f"WIGZO_BASE_URL looks wrong ({self._scrub(self._base_url)}): it should be Wigzo's address "
                    "alone, e.g. https://app.wigzo.com")
        if status is not None and 300 <= status < 400:
            return f"WIGZO_BASE_URL ({self._scrub(self._base_url)}) redirects: set it to where it redirects to"
        if status in (400, 409, 413, 422):
            return ("Wigzo refuses every event the same way: check the event mapping (WIGZO_EVENT_MAP) and the "
                    "rules set up in Wigzo")
        return "check WIGZO_BASE_URL, WIGZO_CA_BUNDLE and any proxy between this service and Wigzo"
