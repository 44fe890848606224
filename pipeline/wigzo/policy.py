"""The delivery policy, free of I/O: what an answer from Wigzo means and how long to wait.

Everything here is deterministic given a clock value and a `random.Random`, so the rules that decide
whether an event is retried, dead-lettered or held back during an outage are unit-tested exactly.
`pipeline.wigzo.client` does the locking around these state machines and `pipeline.wigzo.transport` the HTTP.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:  # only the types: importing the transport would load the HTTP library
    from pipeline.config import Settings
    from pipeline.wigzo.transport import TransportError


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"          # transient: Wigzo or the network is having trouble
    THROTTLED = "throttled"  # 429: Wigzo is up but wants us slower
    PERMANENT = "permanent"  # this event will never be accepted as it is: dead-letter it
    AUTH = "auth"            # our credentials are wrong: a configuration problem, never the event's fault


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """The tunable part of delivery. Defaults suit the real Wigzo; tests pass time-scaled copies.
    `retry_statuses` is the user's setting (WIGZO_RETRY_STATUSES), so it has no default here."""

    retry_statuses: frozenset[int] = field(kw_only=True)
    throttle_statuses: frozenset[int] = frozenset({429})
    auth_statuses: frozenset[int] = frozenset({401, 403})
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 300.0
    """A proxy asking for days must not park events that long."""
    circuit_window: int = 20
    circuit_min_calls: int = 10
    circuit_failure_ratio: float = 0.75
    probe_base: float = 1.0
    probe_cap: float = 30.0
    auth_probe_base: float = 1.0
    auth_probe_cap: float = 5.0
    """Probes while the token is rejected or the configuration is wrong: an operator fixing it wants delivery
    back within seconds, and one request every 5 s costs Wigzo nothing."""
    throttle_decrease: float = 0.5
    throttle_window: int = 50
    throttle_ratio: float = 0.35
    """The concurrency limit is lowered only when more than this share of a window of answers were 429s: a
    server shedding load at random answers a steady minority with 429, a rate limit we exceed most of them."""
    stall_after: float = 3.0
    """A request unanswered for this long (Wigzo hangs) stops counting against the concurrency limit, so
    requests hanging until their read timeout cannot hold delivery at zero once Wigzo answers again."""
    gate_poll: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryPolicy:
        """The policy delivery runs with: the defaults above, and the user's retry statuses."""
        return cls(retry_statuses=settings.retry_statuses)

    def classify_status(self, status: int) -> Verdict:
        if 200 <= status < 300:
            return Verdict.DELIVERED
        if status in self.throttle_statuses:
            return Verdict.THROTTLED
        if status in self.auth_statuses:
            return Verdict.AUTH
        if status in self.retry_statuses or status >= 500:
            return Verdict.RETRY
        return Verdict.PERMANENT


def classify_exception(exc: TransportError) -> Verdict:
    """Network trouble is transient; a request that cannot even be built never will be."""
    return Verdict.RETRY if exc.transient else Verdict.PERMANENT


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def backoff_delay(policy: DeliveryPolicy, retry_number: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter: spreads a herd of retries instead of synchronising it."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2 ** min(retry_number, 62))
    return rng.uniform(0.0, ceiling)


def retry_delay(policy: DeliveryPolicy, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
    """Never earlier than Retry-After allows; a little spread on top so waiters do not return in lockstep."""
    if retry_after is None:
        return backoff_delay(policy, retry_number, rng)
    return min(retry_after, policy.retry_after_cap) + rng.uniform(0.0, policy.backoff_base)


class Health(StrEnum):
    HEALTHY = "healthy"
    CIRCUIT_OPEN = "circuit_open"
    AUTH_FAILED = "auth_failed"
    MISCONFIGURED = "misconfigured"  # every event fails the same permanent way: our settings, not the events


@dataclass(frozen=True, slots=True)
class Failure:
    """How an attempt failed for good, as far as telling a broken configuration from bad events goes: the
    status and the route it came from (a 404 at /rest/v1/learn/event), or a transport error's label
    (InvalidURL) with no route, since the request never reached one."""

    status: int | None
    label: str
    path: str = ""


Kind = TypeVar("Kind", bound=Hashable)


class FailureStreak(Generic[Kind]):
    """Counts, per kind of permanent failure, the distinct events that failed that way since the last success.

    One event rejected is the event's fault; `threshold` events in a row rejected the same way with nothing
    delivered in between is a configuration problem (a wrong base URL, a mapping Wigzo no longer accepts),
    and dead-lettering the whole stream would only make work for the operator. Each event counts once: a
    judged event is final unless the streak is already systemic, and then it is held, not judged. Wigzo's
    answers count here by `Failure`; the mapping's rejections too (pipeline.kafka.mapping_streak).
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold  # WIGZO_SYSTEMIC_FAILURE_THRESHOLD, live: a reload may change it
        self._counts: dict[Kind, int] = {}

    def succeeded(self) -> None:
        if self._counts:
            self._counts.clear()

    def failed(self, failure: Kind) -> bool:
        """Count one more event failing this way; True when that makes it systemic."""
        count = self._counts[failure] = self._counts.get(failure, 0) + 1
        return count >= self.threshold

    def systemic(self, failure: Kind) -> bool:
        return self._counts.get(failure, 0) >= self.threshold


class PermitKind(StrEnum):
    SEND = "send"
    PROBE = "probe"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Permit:
    kind: PermitKind
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    before: Health
    after: Health


class CircuitBreaker:
    """Holds all work back while Wigzo is down, rejects our token or is sent to wrongly, letting one probe
    through at a time.

    Only answers to requests sent after the current state began move it: a stale 503 from before a
    recovery must not reopen the circuit, and a stale 200 must not end an auth failure. Nor does the timeout
    of a request that hung (unanswered past `stall_after`) from before a later request was served: when
    Wigzo recovers from hanging, the requests it left hanging all time out together, and they are old news.
    A probe unanswered after `stall_after` counts as failed, so a hanging probe delays the next one by
    seconds, not by the read timeout. `misconfigured` ends only with a delivery: another permanent failure
    proves nothing.
    """

    def __init__(self, policy: DeliveryPolicy, rng: random.Random, systemic_threshold: int) -> None:
        self._policy = policy
        self._rng = rng
        self._window: deque[bool] = deque(maxlen=policy.circuit_window)  # True = failed
        self.streak: FailureStreak[Failure] = FailureStreak(systemic_threshold)
        self.state = Health.HEALTHY
        self._state_since = -math.inf
        self._unhealthy_since = 0.0
        self._unhealthy_total = 0.0
        self._probe_delay = 0.0
        self._next_probe_at = 0.0
        self._probe_in_flight = False
        self._probe_sent_at = 0.0
        self.served = 0  # answers that prove Wigzo works (delivered or judged the event)
        self._served_sent_at = -math.inf  # when the latest request so answered was sent
        self.last_failure = ""

    def permit(self, now: float) -> Permit:
        if self.state is Health.HEALTHY:
            return Permit(PermitKind.SEND)
        if self._probe_in_flight:
            if now - self._probe_sent_at < self._policy.stall_after:
                return Permit(PermitKind.WAIT, self._probe_sent_at + self._policy.stall_after - now)
            self._probe_in_flight = False  # the probe hangs: as good as failed
            self._schedule_probe(now, grow=True)
        if now >= self._next_probe_at:
            self._probe_in_flight = True
            self._probe_sent_at = now
            return Permit(PermitKind.PROBE)
        return Permit(PermitKind.WAIT, self._next_probe_at - now)

    def cancel_probe(self) -> None:
        """The probing caller gave up before sending: let another waiter probe."""
        self._probe_in_flight = False

    def probe_now(self, now: float) -> None:
        """The settings changed (a token, the base URL): while delivery is paused, the next caller probes at
        once instead of waiting out the backoff, so a fix takes effect in the time of one request."""
        if self.state is not Health.HEALTHY:
            self._probe_in_flight = False
            self._probe_delay = 0.0
            self._next_probe_at = now

    def record(self, verdict: Verdict, sent_at: float, now: float, probe: bool, label: str = "",
               failure: Failure | None = None) -> Transition | None:
        """`failure` describes a PERMANENT verdict, for the streak that tells configuration from bad events."""
        if probe:
            self._probe_in_flight = False
        if verdict is Verdict.DELIVERED:
            self.streak.succeeded()
        systemic = verdict is Verdict.PERMANENT and failure is not None and self.streak.failed(failure)
        if verdict is Verdict.DELIVERED or (verdict is Verdict.PERMANENT and not systemic):
            self.served += 1
            self._served_sent_at = max(self._served_sent_at, sent_at)
        if systemic and self.state is not Health.MISCONFIGURED:
            return self._enter(Health.MISCONFIGURED, now)  # even from a stale answer: it completes the streak
        if sent_at < self._state_since:
            return None
        before = self.state
        if verdict is Verdict.DELIVERED or (verdict is Verdict.PERMANENT and before is not Health.MISCONFIGURED):
            if before is Health.HEALTHY:
                self._window.append(False)
                return None
            return self._enter(Health.HEALTHY, now)
        if verdict is Verdict.AUTH:
            if before is not Health.AUTH_FAILED:
                return self._enter(Health.AUTH_FAILED, now)
            if probe:
                self._schedule_probe(now, grow=True)
            return None
        if verdict in (Verdict.THROTTLED, Verdict.PERMANENT):  # PERMANENT here: misconfigured, probe refused
            if before is Health.CIRCUIT_OPEN:  # Wigzo answers again, if slowly
                return self._enter(Health.HEALTHY, now)
            if before is not Health.HEALTHY and probe:
                self._schedule_probe(now, grow=True)
            return None
        self.last_failure = label
        if before is Health.HEALTHY:
            if now - sent_at >= self._policy.stall_after and sent_at < self._served_sent_at:
                return None  # it hung from before Wigzo served a later request: old news, not an outage
            self._window.append(True)
            failures = sum(self._window)
            if (len(self._window) >= self._policy.circuit_min_calls
                    and failures >= self._policy.circuit_failure_ratio * len(self._window)):
                return self._enter(Health.CIRCUIT_OPEN, now)
        elif probe:
            self._schedule_probe(now, grow=True)
        return None

    def holds(self, verdict: Verdict, failure: Failure | None) -> bool:
        """Whether a permanent failure is the configuration's, not the event's: the event waits, not dead-lettered."""
        return verdict is Verdict.PERMANENT and failure is not None and self.streak.systemic(failure)

    def failures_in_window(self) -> tuple[int, int]:
        return sum(self._window), len(self._window)

    def unhealthy_seconds(self, now: float) -> float:
        """Total time spent with delivery paused (circuit open, token rejected, misconfigured): retry budgets
        do not spend it."""
        ongoing = now - self._unhealthy_since if self.state is not Health.HEALTHY else 0.0
        return self._unhealthy_total + ongoing

    def _enter(self, state: Health, now: float) -> Transition:
        before = self.state
        if before is Health.HEALTHY:
            self._unhealthy_since = now
        if state is Health.HEALTHY:
            self._unhealthy_total += now - self._unhealthy_since
            self._window.clear()
            self._probe_in_flight = False
        self.state = state
        self._state_since = now
        if state is not Health.HEALTHY:
            self._schedule_probe(now, grow=False)
        return Transition(before, state)

    def _schedule_probe(self, now: float, grow: bool) -> None:
        if self.state in (Health.AUTH_FAILED, Health.MISCONFIGURED):  # waiting for an operator, not for Wigzo
            base, cap = self._policy.auth_probe_base, self._policy.auth_probe_cap
        else:
            base, cap = self._policy.probe_base, self._policy.probe_cap
        self._probe_delay = min(cap, self._probe_delay * 2) if grow else base
        # up to 20% jitter so several pipeline instances do not probe in step
        self._next_probe_at = now + self._probe_delay * (1.0 + 0.2 * self._rng.random())


class ConcurrencyLimit:
    """Additive-increase / multiplicative-decrease limit on requests in flight, driven by 429s and stalls.

    Scattered 429s do not lower it: each throttled request already waits out its own Retry-After, and
    halving the whole client for every stray 429 starved it (10% random 429s cut 1,478 events/s to 151).
    It is lowered when throttling is systematic: at least `throttle_ratio` of a window of `throttle_window`
    answers were 429s, counting only answers to requests sent since the last decrease (an answer to a
    request sent before it says nothing about the lowered rate). A request stalled past `stall_after` also
    lowers it, at most once per `stall_after`: stalled requests no longer count against the limit, and
    halving is what keeps those hanging requests to about twice the maximum in all.
    """

    def __init__(self, policy: DeliveryPolicy, maximum: int) -> None:
        self._policy = policy
        self.maximum = maximum
        self._limit = float(maximum)
        self._last_decrease = -math.inf
        self._answers = 0
        self._throttled = 0

    @property
    def allowed(self) -> int:
        return max(1, int(self._limit))

    @property
    def throttled(self) -> bool:
        return self._limit < self.maximum

    def on_answer(self, throttled: bool, sent_at: float, now: float) -> bool:
        """Count one answer; True when a window full of 429s lowered the limit."""
        if sent_at < self._last_decrease:
            return False
        self._answers += 1
        self._throttled += throttled
        if self._answers < self._policy.throttle_window:
            return False
        systematic = self._throttled >= self._policy.throttle_ratio * self._answers
        self._answers = self._throttled = 0
        return systematic and self._decrease(now)

    def on_stall(self, now: float) -> bool:
        """A request stalled; True when that lowered the limit."""
        return now - self._last_decrease >= self._policy.stall_after and self._decrease(now)

    def on_success(self) -> None:
        self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)

    def resize(self, maximum: int) -> None:
        """WIGZO_MAX_IN_FLIGHT changed: a lower maximum caps the limit now, a higher one is grown into as Wigzo
        keeps answering (as after throttling), unless the limit was at its maximum."""
        at_maximum = not self.throttled
        self.maximum = maximum
        self._limit = float(maximum) if at_maximum else min(self._limit, float(maximum))

    def _decrease(self, now: float) -> bool:
        self._last_decrease = now
        self._answers = self._throttled = 0
        before = self.allowed
        self._limit = max(1.0, self._limit * self._policy.throttle_decrease)
        return self.allowed != before


@dataclass(slots=True)
class RetryBudget:
    """What one event may spend on retries while Wigzo serves other events.

    A failure counts only if some other request was served since this event's previous attempt
    (otherwise Wigzo is down, not the event at fault), and time counts only while delivery is not
    paused. So an outage of any length spends nothing.
    """

    max_attempts: int
    max_seconds: float
    counted_failures: int = 0
    started_at: float | None = None
    unhealthy_at_start: float = 0.0

    def spend(self, others_served: bool, now: float, unhealthy_seconds: float) -> bool:
        """Record one retryable failure; True when the budget is exhausted."""
        if self.started_at is None:
            self.started_at, self.unhealthy_at_start = now, unhealthy_seconds
        if not others_served:
            return False
        self.counted_failures += 1
        return (self.counted_failures >= self.max_attempts
                or self.healthy_seconds(now, unhealthy_seconds) >= self.max_seconds)

    def healthy_seconds(self, now: float, unhealthy_seconds: float) -> float:
        if self.started_at is None:
            return 0.0
        return (now - self.started_at) - (unhealthy_seconds - self.unhealthy_at_start)
