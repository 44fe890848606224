"""The delivery policy's rules, with a fixed clock and seeded randomness."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from pipeline.config import Settings
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
    backoff_delay,
    classify_exception,
    parse_retry_after,
    retry_delay,
)
from pipeline.wigzo.transport import TransportError

POLICY = DeliveryPolicy.from_settings(Settings())  # as delivery builds it from default settings


@pytest.mark.parametrize("status, verdict", [
    (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (204, Verdict.DELIVERED),
    (429, Verdict.THROTTLED),
    (401, Verdict.AUTH), (403, Verdict.AUTH),
    (408, Verdict.RETRY), (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY), (504, Verdict.RETRY),
    (507, Verdict.RETRY),
    (400, Verdict.PERMANENT), (404, Verdict.PERMANENT), (409, Verdict.PERMANENT), (413, Verdict.PERMANENT),
    (422, Verdict.PERMANENT), (418, Verdict.PERMANENT), (301, Verdict.PERMANENT),
])
def test_each_status_has_its_default_verdict(status: int, verdict: Verdict) -> None:
    assert POLICY.classify_status(status) is verdict


def test_the_classifier_is_configurable() -> None:
    policy = DeliveryPolicy(retry_statuses=frozenset({409, 503}), auth_statuses=frozenset({401}))
    assert policy.classify_status(409) is Verdict.RETRY
    assert policy.classify_status(403) is Verdict.PERMANENT


@pytest.mark.parametrize("exc, verdict", [
    (TransportError("ReadTimeout", "read timed out", transient=True), Verdict.RETRY),
    (TransportError("InvalidHeader", "bad header", transient=False), Verdict.PERMANENT),
])
def test_network_trouble_is_retried_and_unbuildable_requests_are_not(exc: TransportError, verdict: Verdict) -> None:
    """Which requests exception is which: tests/unit/test_transport.py."""
    assert classify_exception(exc) is verdict


def test_the_policy_loads_no_http_library() -> None:
    probe = "import sys, pipeline.wigzo.policy; print(sorted({'requests', 'urllib3'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("header, seconds", [
    ("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0),
    ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),
    ("Sun, 01 Mar 2026 11:59:00 GMT", 0.0),   # already past: go now
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None),
])
def test_retry_after_is_read_as_seconds_or_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_http_date_from_formatter_roundtrips() -> None:
    when = datetime.fromtimestamp(NOW + 90, timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW) == pytest.approx(90.0)


def test_backoff_grows_exponentially_up_to_its_cap_with_full_jitter() -> None:
    policy = replace(POLICY, backoff_base=0.5, backoff_cap=8.0)
    rng = random.Random(7)
    for retry_number, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0), (10_000, 8.0)]:
        delays = [backoff_delay(policy, retry_number, rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # jitter spans the whole range


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(POLICY, n, random.Random(1)) for n in range(5)]
    assert first == [backoff_delay(POLICY, n, random.Random(1)) for n in range(5)]


def test_retry_after_is_a_floor_never_shortened_and_capped_when_absurd() -> None:
    policy = replace(POLICY, backoff_base=0.5, retry_after_cap=300.0)
    rng = random.Random(3)
    delays = [retry_delay(policy, 1, 2.0, rng) for _ in range(200)]
    assert all(2.0 <= d <= 2.5 for d in delays)
    assert 300.0 <= retry_delay(policy, 1, 86_400.0, rng) <= 300.5
    assert 0.0 <= retry_delay(policy, 1, None, rng) <= 1.0


FAST = replace(POLICY, circuit_window=10, circuit_min_calls=4, circuit_failure_ratio=0.75,
               probe_base=1.0, probe_cap=8.0, auth_probe_base=5.0, auth_probe_cap=20.0)


def breaker(systemic_threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(FAST, random.Random(0), systemic_threshold)


def fail(b: CircuitBreaker, now: float, n: int = 1, probe: bool = False) -> Transition | None:
    result = None
    for _ in range(n):
        result = b.record(Verdict.RETRY, sent_at=now, now=now, probe=probe, label="503") or result
    return result


def test_the_circuit_stays_closed_below_the_minimum_number_of_calls() -> None:
    b = breaker()
    assert fail(b, 1.0, 3) is None
    assert b.state is Health.HEALTHY
    assert b.permit(1.0).kind is PermitKind.SEND


def test_the_circuit_opens_when_most_recent_requests_fail() -> None:
    b = breaker()
    b.record(Verdict.DELIVERED, 0.0, 0.0, probe=False)
    assert fail(b, 1.0, 2) is None
    assert fail(b, 1.0, 1) == Transition(Health.HEALTHY, Health.CIRCUIT_OPEN)  # 3 of 4 = 75%
    assert b.last_failure == "503"


def test_a_minority_of_failures_keeps_the_circuit_closed() -> None:
    b = breaker()
    for _ in range(20):
        fail(b, 1.0, 1)
        b.record(Verdict.DELIVERED, 1.0, 1.0, probe=False)
        b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False)  # a 400 still proves Wigzo works
    assert b.state is Health.HEALTHY


def test_429_and_auth_do_not_count_as_outage_failures() -> None:
    b = breaker()
    for _ in range(10):
        b.record(Verdict.THROTTLED, 1.0, 1.0, probe=False)
    assert b.state is Health.HEALTHY and b.failures_in_window() == (0, 0)


def test_an_open_circuit_lets_one_probe_through_after_a_growing_delay() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    permit = b.permit(10.0)
    assert permit.kind is PermitKind.WAIT and 1.0 <= permit.wait <= 1.2
    assert b.permit(11.3).kind is PermitKind.PROBE
    assert b.permit(11.3).kind is PermitKind.WAIT  # only one probe at a time
    assert fail(b, 11.5, probe=True) is None      # probe failed: wait about twice as long
    wait = b.permit(11.5).wait
    assert 2.0 <= wait <= 2.4
    for now in (20.0, 40.0, 80.0):
        assert b.permit(now).kind is PermitKind.PROBE
        fail(b, now, probe=True)
    assert b.permit(80.0).wait <= 8.0 * 1.2       # capped


def test_a_successful_probe_closes_the_circuit_and_clears_the_window() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    assert b.permit(12.0).kind is PermitKind.PROBE
    assert b.record(Verdict.DELIVERED, 12.0, 12.1, probe=True) == Transition(Health.CIRCUIT_OPEN, Health.HEALTHY)
    assert b.permit(12.1).kind is PermitKind.SEND
    assert b.failures_in_window() == (0, 0)


def test_a_throttled_probe_also_closes_the_circuit() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    assert b.record(Verdict.THROTTLED, 12.0, 12.1, probe=True) == Transition(Health.CIRCUIT_OPEN, Health.HEALTHY)


def test_answers_to_requests_sent_before_the_state_changed_are_stale() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    assert b.record(Verdict.DELIVERED, sent_at=9.0, now=10.5, probe=False) is None
    assert b.state is Health.CIRCUIT_OPEN
    assert b.permit(12.0).kind is PermitKind.PROBE
    b.record(Verdict.DELIVERED, sent_at=12.0, now=12.1, probe=True)
    for _ in range(4):  # failures of the outage arriving after the recovery
        b.record(Verdict.RETRY, sent_at=11.5, now=12.5, probe=False)
    assert b.state is Health.HEALTHY and b.failures_in_window() == (0, 0)


def test_a_cancelled_probe_lets_another_caller_probe() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    assert b.permit(12.0).kind is PermitKind.PROBE
    b.cancel_probe()
    assert b.permit(12.0).kind is PermitKind.PROBE


def test_a_rejected_token_pauses_everything_and_probes_slowly_until_accepted() -> None:
    b = breaker()
    assert b.record(Verdict.AUTH, 1.0, 1.0, probe=False) == Transition(Health.HEALTHY, Health.AUTH_FAILED)
    assert b.record(Verdict.AUTH, 1.0, 1.1, probe=False) is None  # the rest of the burst: no second transition
    permit = b.permit(1.1)
    assert permit.kind is PermitKind.WAIT and permit.wait >= 5.0 - 0.1
    assert b.permit(7.1).kind is PermitKind.PROBE
    assert b.record(Verdict.AUTH, 7.1, 7.2, probe=True) is None
    assert b.permit(7.2).wait >= 10.0
    assert b.permit(20.0).kind is PermitKind.PROBE
    assert b.record(Verdict.RETRY, 20.0, 20.1, probe=True) is None  # a 503 says nothing about the token
    assert b.state is Health.AUTH_FAILED
    assert b.permit(50.0).kind is PermitKind.PROBE
    assert b.record(Verdict.DELIVERED, 50.0, 50.1, probe=True) == Transition(Health.AUTH_FAILED, Health.HEALTHY)


def test_auth_failure_overrides_an_open_circuit() -> None:
    b = breaker()
    fail(b, 10.0, 4)
    assert b.permit(12.0).kind is PermitKind.PROBE
    assert b.record(Verdict.AUTH, 12.0, 12.1, probe=True) == Transition(Health.CIRCUIT_OPEN, Health.AUTH_FAILED)


def test_unhealthy_time_accumulates_only_while_not_healthy() -> None:
    b = breaker()
    assert b.unhealthy_seconds(5.0) == 0.0
    fail(b, 10.0, 4)
    assert b.unhealthy_seconds(15.0) == 5.0
    b.permit(15.0)
    b.record(Verdict.DELIVERED, 15.0, 16.0, probe=True)
    assert b.unhealthy_seconds(100.0) == 6.0
    b.record(Verdict.AUTH, 100.0, 100.0, probe=False)
    assert b.unhealthy_seconds(103.0) == 9.0


def test_served_counts_every_answer_that_proves_wigzo_works() -> None:
    b = breaker()
    b.record(Verdict.DELIVERED, 0.0, 0.0, probe=False)
    b.record(Verdict.PERMANENT, 0.0, 0.0, probe=False)
    b.record(Verdict.RETRY, 0.0, 0.0, probe=False)
    b.record(Verdict.THROTTLED, 0.0, 0.0, probe=False)
    assert b.served == 2


def test_auth_probes_are_capped_near_five_seconds_by_default() -> None:
    """An operator fixing the token gets delivery back within seconds (it used to back off to 60 s)."""
    b = CircuitBreaker(POLICY, random.Random(0), systemic_threshold=10)
    b.record(Verdict.AUTH, 0.0, 0.0, probe=False)
    now, waits = 0.0, []
    for _ in range(8):
        permit = b.permit(now)
        assert permit.kind is PermitKind.WAIT
        waits.append(permit.wait)
        now += permit.wait
        assert b.permit(now).kind is PermitKind.PROBE
        b.record(Verdict.AUTH, now, now, probe=True)
    assert waits[0] <= 1.2 and waits[1] > waits[0]  # quick at first, then backing off...
    assert max(waits) <= 5.0 * 1.2 and waits[-1] >= 5.0  # ...to about 5 s, no further


def test_a_hanging_probe_counts_as_failed_after_stall_after() -> None:
    """A probe Wigzo leaves hanging must not hold the next one back until its read timeout."""
    b = CircuitBreaker(replace(POLICY, probe_base=1.0, stall_after=3.0), random.Random(0), systemic_threshold=10)
    for _ in range(10):
        b.record(Verdict.RETRY, 0.0, 0.0, probe=False)
    assert b.state is Health.CIRCUIT_OPEN
    assert b.permit(2.0).kind is PermitKind.PROBE
    permit = b.permit(3.0)
    assert permit.kind is PermitKind.WAIT and permit.wait == pytest.approx(2.0)  # until the probe stalls
    permit = b.permit(5.0)  # stalled: failed, and the next probe follows the backoff
    assert permit.kind is PermitKind.WAIT and 2.0 <= permit.wait <= 2.4
    assert b.permit(5.0 + permit.wait).kind is PermitKind.PROBE
    # the hanging probe's own answer arriving at last still counts: Wigzo answers again
    assert b.record(Verdict.DELIVERED, 2.0, 16.0, probe=True) == Transition(Health.CIRCUIT_OPEN, Health.HEALTHY)


def test_timeouts_of_requests_left_hanging_before_a_later_success_do_not_open_the_circuit() -> None:
    """Wigzo hung, then answered again: the requests it left hanging time out together, seconds later."""
    b = CircuitBreaker(replace(POLICY, stall_after=3.0), random.Random(0), systemic_threshold=10)
    b.record(Verdict.DELIVERED, sent_at=10.0, now=10.01, probe=False)  # sent after the hanging ones
    for _ in range(20):
        assert b.record(Verdict.RETRY, sent_at=1.0, now=16.0, probe=False, label="ReadTimeout") is None
    assert b.state is Health.HEALTHY and b.failures_in_window() == (0, 1)
    # quick failures of requests sent before that success still count: a partial outage opens the circuit
    for _ in range(20):
        b.record(Verdict.RETRY, sent_at=9.9, now=10.2, probe=False, label="503")
    assert b.state is Health.CIRCUIT_OPEN


NOT_FOUND = Failure(404, "404", "/rest/v1/learn/event")


def test_the_same_permanent_failure_for_threshold_events_is_a_configuration_problem() -> None:
    b = breaker(systemic_threshold=3)
    for _ in range(2):
        assert b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, label="404", failure=NOT_FOUND) is None
        assert not b.holds(Verdict.PERMANENT, NOT_FOUND)  # these two are dead-lettered
    assert b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, label="404", failure=NOT_FOUND) == Transition(
        Health.HEALTHY, Health.MISCONFIGURED)
    assert b.holds(Verdict.PERMANENT, NOT_FOUND)  # the third, and every one after it, waits instead
    # answers to requests already on the wire arrive: held, no second transition
    assert b.record(Verdict.PERMANENT, 0.5, 1.1, probe=False, label="404", failure=NOT_FOUND) is None
    assert b.holds(Verdict.PERMANENT, NOT_FOUND)
    permit = b.permit(1.1)
    assert permit.kind is PermitKind.WAIT and permit.wait <= FAST.auth_probe_base * 1.2


def test_a_delivery_between_failures_restarts_the_count_and_other_failures_count_apart() -> None:
    b = breaker(systemic_threshold=3)
    other_route = Failure(404, "404", "/rest/v1/learn/identify")
    invalid_url = Failure(None, "InvalidURL")
    for failure in (NOT_FOUND, NOT_FOUND, other_route, other_route, invalid_url, invalid_url):
        b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, failure=failure)
    b.record(Verdict.RETRY, 1.0, 1.0, probe=False)  # a 503 is not a success: the counts stand
    b.record(Verdict.DELIVERED, 1.0, 1.0, probe=False)
    for failure in (NOT_FOUND, NOT_FOUND, other_route, other_route, invalid_url, invalid_url):
        b.record(Verdict.PERMANENT, 2.0, 2.0, probe=False, failure=failure)
    assert b.state is Health.HEALTHY
    assert b.record(Verdict.PERMANENT, 2.0, 2.0, probe=False, failure=invalid_url) == Transition(
        Health.HEALTHY, Health.MISCONFIGURED)
    assert b.holds(Verdict.PERMANENT, invalid_url) and not b.holds(Verdict.PERMANENT, NOT_FOUND)


def test_misconfigured_ends_only_when_a_probe_is_delivered() -> None:
    b = breaker(systemic_threshold=2)
    b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, failure=NOT_FOUND)
    b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, failure=NOT_FOUND)
    assert b.state is Health.MISCONFIGURED
    served = b.served
    now = 10.0
    for verdict, failure in [(Verdict.PERMANENT, NOT_FOUND), (Verdict.RETRY, None), (Verdict.THROTTLED, None),
                             (Verdict.PERMANENT, Failure(400, "400", "/rest/v1/learn/event"))]:
        assert b.permit(now).kind is PermitKind.PROBE
        assert b.record(verdict, now, now, probe=True, failure=failure) is None, verdict
        assert b.state is Health.MISCONFIGURED
        now += 30.0  # past FAST's longest probe delay (20 s, +20%)
    assert b.served == served + 1  # held answers prove nothing; the other failure's event was judged
    assert b.permit(now).kind is PermitKind.PROBE
    assert b.record(Verdict.DELIVERED, now, now, probe=True) == Transition(Health.MISCONFIGURED, Health.HEALTHY)
    assert not b.holds(Verdict.PERMANENT, NOT_FOUND)  # a delivery restarts the count
    assert b.unhealthy_seconds(now) == now - 1.0


def test_a_rejected_token_overrides_misconfigured() -> None:
    b = breaker(systemic_threshold=1)
    b.record(Verdict.PERMANENT, 1.0, 1.0, probe=False, failure=NOT_FOUND)
    assert b.permit(8.0).kind is PermitKind.PROBE
    assert b.record(Verdict.AUTH, 8.0, 8.1, probe=True) == Transition(Health.MISCONFIGURED, Health.AUTH_FAILED)


def answers(limit: ConcurrencyLimit, rng: random.Random, share_429: float, count: int, sent_at: float,
            now: float) -> int:
    """Feed `count` answers, each a 429 with probability `share_429`; how many times the limit was lowered."""
    lowered = 0
    for _ in range(count):
        throttled = rng.random() < share_429
        lowered += limit.on_answer(throttled, sent_at, now)
        if not throttled:
            limit.on_success()
    return lowered


def test_scattered_429s_never_lower_the_limit() -> None:
    """Each throttled request waits out its own Retry-After; halving the client for stray 429s starved it."""
    limit = ConcurrencyLimit(POLICY, maximum=64)
    assert answers(limit, random.Random(1), 0.10, 20_000, sent_at=0.0, now=1.0) == 0
    assert limit.allowed == 64 and not limit.throttled


def test_a_window_mostly_answered_429_halves_the_limit_once() -> None:
    policy = replace(POLICY, throttle_window=10, throttle_ratio=0.35, throttle_decrease=0.5)
    limit = ConcurrencyLimit(policy, maximum=32)
    for _ in range(9):
        assert not limit.on_answer(True, sent_at=1.0, now=1.0)
    assert limit.on_answer(False, sent_at=1.0, now=2.0)  # 9 of 10: the window is full and throttled
    assert limit.allowed == 16 and limit.throttled
    # answers to requests sent before the decrease reflect the old rate: they cannot lower it again
    for _ in range(30):
        assert not limit.on_answer(True, sent_at=1.5, now=2.5)
    assert limit.allowed == 16
    for _ in range(9):
        limit.on_answer(True, sent_at=3.0, now=3.0)
    assert limit.on_answer(True, sent_at=3.0, now=3.0)
    assert limit.allowed == 8


def test_a_window_below_the_ratio_lowers_nothing() -> None:
    limit = ConcurrencyLimit(replace(POLICY, throttle_window=20, throttle_ratio=0.35), maximum=32)
    for n in range(20):
        assert not limit.on_answer(n < 6, sent_at=1.0, now=1.0)  # 6 of 20 = 30%
    assert limit.allowed == 32
    for n in range(20):
        limit.on_answer(n < 7, sent_at=1.0, now=1.0)  # 7 of 20 = 35%
    assert limit.allowed == 16


def test_the_limit_floors_at_one_and_recovers_additively() -> None:
    limit = ConcurrencyLimit(replace(POLICY, throttle_window=1, throttle_ratio=0.5), maximum=32)
    for now in range(1, 10):
        limit.on_answer(True, sent_at=float(now), now=float(now))
    assert limit.allowed == 1
    successes = 0
    while limit.throttled:
        limit.on_success()
        successes += 1
    assert limit.allowed == 32
    assert 400 < successes < 600  # about 1 + 2 + ... + 31: one step per window of successes


def test_a_stall_lowers_the_limit_at_most_once_per_stall_after() -> None:
    """Stalled requests stop counting against the limit; halving is what keeps them to about 2x the maximum."""
    limit = ConcurrencyLimit(replace(POLICY, stall_after=3.0), maximum=64)
    assert limit.on_stall(10.0) and limit.allowed == 32
    assert not limit.on_stall(12.9)
    assert limit.on_stall(13.0) and limit.allowed == 16
    hanging, now = 64 + 32, 13.0  # what could be left hanging so far
    while limit.allowed > 1:
        now += 3.0
        hanging += limit.allowed
        limit.on_stall(now)
    assert hanging < 2 * 64


def test_the_default_throttle_rule_separates_random_429s_from_a_rate_limit() -> None:
    """With the defaults, 20% random 429s (a server shedding load) rarely lower the limit; 60% (a rate limit
    we exceed 2.5 times over) lower it within a window or two."""
    rng = random.Random(3)
    random_shedding = ConcurrencyLimit(POLICY, maximum=64)
    assert answers(random_shedding, rng, 0.20, 5_000, sent_at=0.0, now=1.0) <= 1
    over_the_limit = ConcurrencyLimit(POLICY, maximum=64)
    assert answers(over_the_limit, rng, 0.60, 2 * POLICY.throttle_window, sent_at=0.0, now=1.0) == 1


def test_the_budget_is_spent_only_by_failures_while_others_are_served() -> None:
    budget = RetryBudget(max_attempts=3, max_seconds=1000.0)
    for now in range(100):  # an outage: nobody is served
        assert not budget.spend(others_served=False, now=float(now), unhealthy_seconds=0.0)
    assert budget.counted_failures == 0
    assert not budget.spend(True, 100.0, 0.0)
    assert not budget.spend(True, 101.0, 0.0)
    assert budget.spend(True, 102.0, 0.0)


def test_the_time_budget_excludes_time_spent_with_the_circuit_open() -> None:
    budget = RetryBudget(max_attempts=100, max_seconds=10.0)
    assert not budget.spend(True, now=0.0, unhealthy_seconds=50.0)
    assert not budget.spend(True, now=500.0, unhealthy_seconds=545.0)  # 500 s passed, 495 s of them unhealthy
    assert budget.healthy_seconds(500.0, 545.0) == 5.0
    assert budget.spend(True, now=506.0, unhealthy_seconds=545.0)
