"""Delivers WigzoRequests over HTTP without losing events or flooding the dead-letter topic.

One transport (by default a pooled `requests.Session`, see `pipeline.wigzo.transport`) is shared by the
consumer's worker threads. A request's `RequestAttempts` (from `start`) is resumable: each `attempt` makes at
most one try and returns the final result (delivered, judged permanently unacceptable, out of its own retry
budget while Wigzo serves others, or aborted because `stop` is set) or how long to wait before trying again, so
a backoff or a Retry-After holds no thread (`pipeline.kafka.executor` re-runs the step on a timer). `deliver` is
the blocking loop around it. Outages, rejected tokens and a broken configuration hold every event back (the
consumer sees `accepting_work() == False` and pauses) instead of dead-lettering them. The rules live in
`pipeline.wigzo.policy`; this module is the locking around them, and the client's metrics.

One client serves one destination (its own circuit, auth state and concurrency slots). What a settings reload
may change (tokens, base URL, timeouts, retry statuses and budgets, the CA bundle) is read once per attempt from
the client's current `_Live` snapshot, so a retry after a reload uses the new values; the tokens the mapping put
in a request's query are replaced by the client's own. When Wigzo rejects a token, the client first reads the
token files again: a token rotated in Wigzo and in its file at about the same time costs one retry, not a pause.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import orjson

from pipeline.config import DEFAULT_DESTINATION, ConfigError, Settings, read_secret_file
from pipeline.model import (
    Aborted,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    Rejection,
    Scrubber,
    Secret,
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
TOKEN_FILES = (("wigzo_org_token", "WIGZO_ORG_TOKEN_FILE"), ("wigzo_api_token", "WIGZO_API_TOKEN_FILE"))
REBUILDS_TRANSPORT = frozenset({"ca_bundle", "max_in_flight"})  # its TLS trust and pool size are fixed when made


def check_base_url(url: str) -> None:
    """ConfigError unless WIGZO_BASE_URL is an http(s) URL with a host."""
    base = urlsplit(url)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ConfigError(f"WIGZO_BASE_URL={url!r} is invalid: write it as https://host[:port], e.g. "
                          "https://app.wigzo.com")


def auth_query(org_token: Secret, api_token: Secret) -> tuple[tuple[str, str], ...]:
    """Wigzo's auth parameters, as the mapping writes them (pipeline.wigzo.mapping.MappingConfig.query)."""
    api = (("token", api_token.reveal()),) if api_token else ()
    return (*api, ("org_token", org_token.reveal()))


@dataclass(frozen=True, slots=True)
class _Live:
    """What a reload may change, read once per attempt."""

    settings: Settings
    base_url: str
    timeout: tuple[float, float]
    auth: tuple[tuple[str, str], ...]  # the query parameters carrying the tokens
    policy: DeliveryPolicy  # classifies answers: WIGZO_RETRY_STATUSES
    transport: Transport
    scrub: Scrubber

    def with_tokens(self, org_token: Secret, api_token: Secret) -> _Live:
        settings = replace(self.settings, wigzo_org_token=org_token, wigzo_api_token=api_token)
        return replace(self, settings=settings, auth=auth_query(org_token, api_token),
                       scrub=Scrubber((*self.settings.secrets(), *settings.secrets())))


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


@dataclass(eq=False)
class RequestAttempts:
    """One request's way to a final result: what the retry budget and the dead letter need between attempts
    (attempts, failures with their times, the budget itself), so resuming on another thread, later, decides
    exactly as one loop would. Plain data: `WigzoClient.attempt` reads and updates it."""

    request: WigzoRequest
    body: bytes | DeliveryFailed  # or the failure to serialize it: final at the first attempt
    budget: RetryBudget
    served_before: int  # the breaker's `served` when this event last failed (or started)
    attempts: int = 0
    retries: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (wall-clock time, label) per failed try

    def failed(self, error_class: str, reason: str, status: int | None) -> DeliveryFailed:
        """Every attempt failed, so the attempt count is the history's length."""
        history = tuple(f"{utc_iso(wall)} {label}" for wall, label in self.failures)
        return DeliveryFailed(Rejection("delivery", error_class, reason, http_status=status), len(self.failures),
                              self.failures[0][0], self.failures[-1][0], history)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


class InFlight:
    """Requests on the wire under the concurrency limit: slots taken and freed by the worker threads. A request
    Wigzo leaves hanging past `stall_after` keeps its connection until the read timeout but not its slot."""

    def __init__(self, policy: DeliveryPolicy, maximum: int, lock: threading.Lock,
                 clock: Callable[[], float], destination: str) -> None:
        self._policy = policy
        self._clock = clock
        self._in_flight_gauge = IN_FLIGHT.labels(destination)
        self._limit_gauge = CONCURRENCY_LIMIT.labels(destination)
        self._freed = threading.Condition(lock)
        self._tokens = itertools.count()
        self._sending: OrderedDict[int, float] = OrderedDict()  # counted requests, oldest first: send time by slot
        self._stall_warning_due = False  # a stall lowered the limit from its maximum: warn once the lock is free
        self.limit = ConcurrencyLimit(policy, maximum)
        self._published = self.limit.allowed
        self._limit_gauge.set(self._published)

    def take(self, stop: threading.Event) -> int | None:
        """A slot, waited for at most one gate_poll; None: the caller steps again later (its thread may run other
        work meanwhile)."""
        with self._freed:
            if self._count() >= self.limit.allowed:
                self._freed.wait(self._policy.gate_poll)
                if stop.is_set() or self._count() >= self.limit.allowed:
                    return None
            slot = next(self._tokens)
            self._sending[slot] = self._clock()
            lowered, self._stall_warning_due = self._stall_warning_due, False
        self._in_flight_gauge.inc()
        if lowered:
            log.warning("a request to Wigzo has had no answer for %.0f s: lowering concurrency to %d requests in "
                        "flight; requests still hanging no longer count against it", self._policy.stall_after,
                        self.limit.allowed)
        return slot

    def free(self, slot: int) -> None:
        with self._freed:
            self._sending.pop(slot, None)  # gone already if it stalled
            self._freed.notify()
        self._in_flight_gauge.dec()

    def resize(self, maximum: int) -> None:
        """WIGZO_MAX_IN_FLIGHT changed (a reload): waiters recheck against the new limit."""
        with self._freed:
            self.limit.resize(maximum)
            self._publish()
            self._freed.notify_all()

    def on_answer(self, verdict: Verdict, sent_at: float, now: float) -> bool:
        """Feed an answer to the limit (lock held); True when 429s lowered it from its maximum."""
        was_throttled = self.limit.throttled
        lowered = self.limit.on_answer(verdict is Verdict.THROTTLED, sent_at, now)
        if verdict is Verdict.DELIVERED:
            self.limit.on_success()
        self._publish()
        return lowered and not was_throttled

    def _count(self) -> int:
        """Requests on the wire that count against the limit (lock held): those sent within stall_after."""
        now = self._clock()
        stalled = False
        while self._sending:
            slot, sent_at = next(iter(self._sending.items()))
            if now - sent_at < self._policy.stall_after:
                break
            del self._sending[slot]
            stalled = True
        if stalled:
            was_throttled = self.limit.throttled
            if self.limit.on_stall(now):
                self._publish()
                self._stall_warning_due = self._stall_warning_due or not was_throttled
        return len(self._sending)

    def _publish(self) -> None:
        if self.limit.allowed != self._published:
            self._published = self.limit.allowed
            self._limit_gauge.set(self._published)


class WigzoClient:
    def __init__(self, settings: Settings, *, destination: str = DEFAULT_DESTINATION,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, policy: DeliveryPolicy | None = None,
                 transport: Transport | None = None) -> None:
        """`policy` fixes the timings (tests pass time-scaled ones); its retry statuses follow the settings.
        A `transport` given is the caller's: never closed, never rebuilt."""
        check_base_url(settings.wigzo_base_url)
        self.destination = destination
        self._said = "" if destination == DEFAULT_DESTINATION else f"destination {destination}: "  # in log lines
        self._policy = policy or DeliveryPolicy.from_settings(settings)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._owns_transport = transport is None  # close() closes only what this client opened
        self._retired: list[RequestsTransport] = []  # transports a reload replaced: requests may still use them
        self._lock = threading.Lock()
        self._live = self._snapshot(settings, transport or self._new_transport(settings))
        self._in_flight = InFlight(self._policy, settings.max_in_flight, self._lock, clock, destination)
        self._breaker = CircuitBreaker(self._policy, self._rng, settings.systemic_failure_threshold)
        self._resumed = threading.Event()  # set when delivery resumes or its settings change; new for every pause
        self._resumed.set()
        self._problem = ""
        self._health_gauges = (CIRCUIT_OPEN.labels(destination), AUTH_FAILED.labels(destination),
                               MISCONFIGURED.labels(destination))
        self._requests = {status: HTTP_REQUESTS.labels(status, destination)
                          for status in ("2xx", "3xx", "4xx", "5xx", "error")}
        self._duration = HTTP_DURATION.labels(destination)
        self._publish_health(Health.HEALTHY)

    @staticmethod
    def _new_transport(settings: Settings) -> RequestsTransport:
        # requests that hang stop counting against the limit, so up to twice it can be on the wire: pool
        # them all, or each late answer's connection is discarded with a warning
        return RequestsTransport(2 * settings.max_in_flight, settings.ca_bundle)

    def _snapshot(self, settings: Settings, transport: Transport) -> _Live:
        return _Live(settings=settings, base_url=settings.wigzo_base_url.rstrip("/"),
                     timeout=(settings.connect_timeout, settings.read_timeout),
                     auth=auth_query(settings.wigzo_org_token, settings.wigzo_api_token),
                     policy=replace(self._policy, retry_statuses=settings.retry_statuses), transport=transport,
                     scrub=Scrubber(settings.secrets()))

    def reconfigure(self, settings: Settings, changed: Collection[str]) -> None:
        """A reload's settings for this destination (`changed`: the keys that changed; `ca_bundle` also when the
        bundle's file changed). Every request's next attempt uses them; the concurrency limit and the failure
        threshold change now; while delivery is paused, the next caller probes at once with them."""
        check_base_url(settings.wigzo_base_url)
        transport = self._live.transport
        if self._owns_transport and REBUILDS_TRANSPORT & set(changed):
            assert isinstance(transport, RequestsTransport)
            self._retired.append(transport)
            transport = self._new_transport(settings)
        live = self._snapshot(settings, transport)
        self._in_flight.resize(settings.max_in_flight)
        with self._lock:
            self._live = live
            self._breaker.streak.threshold = settings.systemic_failure_threshold
            self._probe_now()

    def _probe_now(self) -> None:
        """(lock held) While paused, let the next caller probe at once, and wake those waiting for the gate."""
        if self._breaker.state is Health.HEALTHY:
            return
        self._breaker.probe_now(self._clock())
        self._resumed.set()
        self._resumed = threading.Event()

    @property
    def state(self) -> str:
        with self._lock:
            if self._breaker.state is not Health.HEALTHY:
                return self._breaker.state.value
            return "throttled" if self._in_flight.limit.throttled else "healthy"

    @property
    def problem(self) -> str:
        """Why delivery is paused, in the words of the log line that said so; empty while it is not."""
        with self._lock:
            return self._problem

    def accepting_work(self) -> bool:
        with self._lock:
            return self._breaker.state is Health.HEALTHY

    def close(self) -> None:
        if self._owns_transport:
            for transport in (*self._retired, self._live.transport):
                assert isinstance(transport, RequestsTransport)
                transport.close()

    def start(self, request: WigzoRequest) -> RequestAttempts:
        """The request's resumable attempts; nothing is sent until the first `attempt`."""
        settings = self._live.settings
        budget = RetryBudget(settings.max_attempts, settings.retry_budget_seconds)
        try:
            body: bytes | DeliveryFailed = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:
            wall = self._wall_clock()
            body = DeliveryFailed(Rejection("delivery", "UnserializableBody", f"the request body is not JSON: {exc}"),
                                  0, wall, wall, ())
        with self._lock:
            served = self._breaker.served
        return RequestAttempts(request, body, budget, served)

    def deliver(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        """Attempt until the result is final or stop is set, waiting on this thread in between."""
        attempts = self.start(request)
        while isinstance(outcome := self.attempt(attempts, stop), Wait):
            self._sleep(outcome, stop)
        return outcome

    def attempt(self, attempts: RequestAttempts, stop: threading.Event) -> DeliveryResult | Wait:
        """At most one try: admit, send, decide. Aborted once `stop` is set, without sending."""
        if stop.is_set():
            return Aborted(attempts.attempts)
        if isinstance(attempts.body, DeliveryFailed):
            return attempts.body
        admitted = self._admit(stop)
        if isinstance(admitted, Wait):
            return admitted
        probe, slot = admitted
        answer, seen = self._send_once(attempts.request, attempts.body, probe, slot)
        attempts.attempts += 1
        if seen is None:  # the token was rejected, and its file holds another one: try that at once
            return Wait(0.0)
        return self._decide(attempts, answer, seen)

    def _sleep(self, wait: Wait, stop: threading.Event) -> None:
        if not wait.wake:
            if wait.seconds > 0:
                stop.wait(wait.seconds)
            return
        until = self._clock() + wait.seconds
        while not any(event.is_set() for event in wait.wake) and (left := until - self._clock()) > 0:
            if stop.wait(min(left, self._policy.gate_poll)):
                return

    def _admit(self, stop: threading.Event) -> tuple[bool, int] | Wait:
        """Pass the breaker's gate and take a slot under the concurrency limit: (whether this is the probe, the
        slot), or how long to wait first. A probe that finds no slot is handed back to the others."""
        with self._lock:
            permit = self._breaker.permit(self._clock())
            if permit.kind is PermitKind.WAIT:
                return Wait(permit.wait, (self._resumed,))
        probe = permit.kind is PermitKind.PROBE
        slot = self._in_flight.take(stop)
        if slot is None:
            if probe:
                with self._lock:
                    self._breaker.cancel_probe()
            return Wait(0.0)
        return probe, slot

    def _send_once(self, request: WigzoRequest, body: bytes, probe: bool,
                   slot: int) -> tuple[_Attempt, _Seen | None]:
        """Send once in the slot `_admit` took, free it, and record the answer where every caller sees it; None
        instead of what was seen when the answer is a rejected token that a newer one replaced (not recorded)."""
        sent_at = self._clock()
        live = self._live
        try:
            attempt = self._send(request, body, live)
        finally:
            self._in_flight.free(slot)
        now, wall = self._clock(), self._wall_clock()
        self._requests[status_class(attempt.status)].inc()
        self._duration.observe(now - sent_at)
        if attempt.verdict is Verdict.AUTH and self._newer_tokens(live, attempt):
            if probe:
                with self._lock:
                    self._breaker.cancel_probe()
                    self._probe_now()
            return attempt, None
        failure = None
        if attempt.verdict is Verdict.PERMANENT:
            failure = Failure(attempt.status, attempt.label, request.path if attempt.status is not None else "")
        with self._lock:
            transition = self._breaker.record(attempt.verdict, sent_at, now, probe, attempt.label, failure)
            held = self._breaker.holds(attempt.verdict, failure)
            window = self._breaker.failures_in_window()
            lowered = self._in_flight.on_answer(attempt.verdict, sent_at, now)
            seen = _Seen(now, wall, self._breaker.served, self._breaker.unhealthy_seconds(now), held)
            if transition:
                message = self._describe(transition, attempt, window, failure, live)
                self._problem = message if transition.after is not Health.HEALTHY else ""
                if transition.after is Health.HEALTHY:
                    self._resumed.set()
                elif transition.before is Health.HEALTHY:
                    self._resumed = threading.Event()
        if lowered:
            log.warning("Wigzo is throttling (%d%% or more of the last %d answers were HTTP 429): lowering "
                        "concurrency to %d requests in flight", round(100 * self._policy.throttle_ratio),
                        self._policy.throttle_window, self._in_flight.limit.allowed)
        if transition:
            self._publish_health(transition.after)
            level = {Health.MISCONFIGURED: logging.ERROR, Health.AUTH_FAILED: logging.ERROR,
                     Health.CIRCUIT_OPEN: logging.WARNING}.get(transition.after, logging.INFO)
            log.log(level, "%s%s", self._said, message)
        return attempt, seen

    def _newer_tokens(self, used: _Live, attempt: _Attempt) -> bool:
        """After Wigzo rejected the tokens `used` carried: whether newer ones are in force, because a reload (or
        another request's rejection) brought them already, or because a token file holds another token now."""
        with self._lock:
            current = self._live
        if current.auth != used.auth:
            return True
        tokens = self._read_token_files(current.settings)
        if tokens is None or auth_query(*tokens) == current.auth:
            return False
        with self._lock:
            if self._live is current:
                self._live = current.with_tokens(*tokens)
        log.info("%sWigzo rejected the token (HTTP %s) and its file holds a new one: sending with it from now on",
                 self._said, attempt.status)
        return True

    def _read_token_files(self, settings: Settings) -> tuple[Secret, Secret] | None:
        """The org and API tokens with those read from files (WIGZO_ORG_TOKEN_FILE, ...) read again; None when
        no token comes from a file, or a file cannot be read (it may be half written: the next rejection
        reads it again)."""
        tokens = {"wigzo_org_token": settings.wigzo_org_token, "wigzo_api_token": settings.wigzo_api_token}
        files = [(attr, settings.secret_files[attr], where) for attr, where in TOKEN_FILES
                 if attr in settings.secret_files]
        if not files:
            return None
        for attr, path, where in files:
            try:
                tokens[attr] = read_secret_file(path, where)
            except ConfigError as exc:
                log.warning("%s%s", self._said, exc)
                return None
        return tokens["wigzo_org_token"], tokens["wigzo_api_token"]

    def _decide(self, attempts: RequestAttempts, attempt: _Attempt, seen: _Seen) -> Delivered | DeliveryFailed | Wait:
        """The final result, or how long to wait before the next attempt (none when the gate alone holds the
        event: the token is rejected or the configuration broken, and a probe must get through first)."""
        if attempt.verdict is Verdict.DELIVERED:
            return Delivered(attempt.status or 0, attempts.attempts)
        attempts.failures.append((seen.wall, attempt.label))
        if attempt.verdict is Verdict.PERMANENT and not seen.held:
            error_class = f"HttpStatus{attempt.status}" if attempt.status else attempt.label
            return attempts.failed(error_class, f"Wigzo answered {attempt.label}: {attempt.detail}", attempt.status)
        log.debug("attempt %d of %s failed: %s", attempts.attempts, attempts.request.path, attempt.label)
        if seen.held or attempt.verdict is Verdict.AUTH:
            RETRIES.labels("misconfigured" if seen.held else "auth", self.destination).inc()
            return Wait(0.0)
        if attempt.verdict is Verdict.RETRY and attempts.budget.spend(seen.served > attempts.served_before,
                                                                      seen.now, seen.unhealthy):
            spent = attempts.budget.healthy_seconds(seen.now, seen.unhealthy)
            return attempts.failed("RetryBudgetExhausted",
                                   f"gave up after {attempts.attempts} attempts over {spent:.1f}s while Wigzo "
                                   f"served other events; last answer {attempt.label}: {attempt.detail}",
                                   attempt.status)
        attempts.served_before = seen.served
        attempts.retries += 1
        reason = ("throttled" if attempt.verdict is Verdict.THROTTLED
                  else "network" if attempt.status is None else "server_error")
        RETRIES.labels(reason, self.destination).inc()
        return Wait(retry_delay(self._policy, attempts.retries, attempt.retry_after, self._rng))

    def _send(self, request: WigzoRequest, body: bytes, live: _Live) -> _Attempt:
        """One try with the settings in force (`live`): its base URL, timeouts and tokens."""
        headers = {"Content-Type": "application/json", **dict(request.headers)}
        params = (*(item for item in request.query if item[0] not in WigzoRequest.SECRET_PARAMS), *live.auth)
        try:
            response = live.transport.send(request.method, live.base_url + request.path, params=params,
                                           body=body, headers=headers, timeout=live.timeout)
        except TransportError as exc:
            return _Attempt(classify_exception(exc), None, exc.label, live.scrub(_one_line(exc.message)))
        verdict = live.policy.classify_status(response.status)
        if verdict is Verdict.DELIVERED:  # the hot path: a success's body and headers tell us nothing more
            return _Attempt(verdict, response.status, str(response.status), "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
        return _Attempt(verdict, response.status, str(response.status), live.scrub(_one_line(response.text)),
                        retry_after)

    def _publish_health(self, state: Health) -> None:
        circuit_open, auth_failed, misconfigured = self._health_gauges
        circuit_open.set(state is Health.CIRCUIT_OPEN)
        auth_failed.set(state is Health.AUTH_FAILED)
        misconfigured.set(state is Health.MISCONFIGURED)

    def _describe(self, transition: Transition, attempt: _Attempt, window: tuple[int, int],
                  failure: Failure | None, live: _Live) -> str:
        """The log line for a change of state, which is also `problem` while delivery is paused."""
        after, before = transition.after, transition.before
        if after is Health.MISCONFIGURED and failure is not None:
            if failure.status is not None:
                what = f"answered {failure.status} at {failure.path}"
            else:
                what = f"failed with {failure.label}"
            return (f"the last {live.settings.systemic_failure_threshold} events were all {what} "
                    f"({attempt.detail[:120]}): {_hint(failure, live.scrub(live.base_url))}; delivery is paused, "
                    f"nothing more is dead-lettered, probing every ~{self._policy.auth_probe_cap:.0f} s until Wigzo "
                    "accepts an event")
        if after is Health.AUTH_FAILED:
            return (f"the Wigzo token was rejected (HTTP {attempt.status}): check WIGZO_ORG_TOKEN / WIGZO_API_TOKEN; "
                    "delivery is paused and retried slowly until Wigzo accepts it (a token file is read again "
                    "at each rejection)")
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


def _hint(failure: Failure, base_url: str) -> str:
    """What to check for a failure every event shares; `base_url` already scrubbed."""
    status = failure.status
    if status in (404, 405) or failure.label in _BAD_BASE_URL_LABELS:
        return (f"WIGZO_BASE_URL looks wrong ({base_url}): it should be Wigzo's address alone, "
                "e.g. https://app.wigzo.com")
    if status is not None and 300 <= status < 400:
        return f"WIGZO_BASE_URL ({base_url}) redirects: set it to where it redirects to"
    if status in (400, 409, 413, 422):
        return ("Wigzo refuses every event the same way: check the event mapping (WIGZO_EVENT_MAP) and the "
                "rules set up in Wigzo")
    return "check WIGZO_BASE_URL, WIGZO_CA_BUNDLE and any proxy between this service and Wigzo"
