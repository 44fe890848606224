"""Scenarios 3 and 4: Wigzo misbehaving while one real pipeline member delivers a backlog that never runs dry.

Throughput is measured from the sandbox's accepted-request timestamps. The member's capacity is bounded by the
sandbox's latency (requests in flight / latency), so it is steady enough to compare phases of one run. The
acceptance criteria are the long versions' thresholds; the short (CI) versions allow a margin for a shared,
busy machine, and every row reports the measured ratios.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from pipeline.dev.sandbox import Faults
from tests.chaos.audit import (
    ResultRow,
    accepted_times,
    audit,
    deliverable,
    rate,
    recovery,
    report,
)
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Feeder,
    Member,
    Members,
    Produced,
    RateMeter,
    Scale,
    TrackingProducer,
    Wigzo,
    ahead_of,
    committed_to_end,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

WINDOW = 2.0           # seconds of throughput that count as "back"
RECOVERY_LIMIT = 10.0  # seconds after a fault clears by which throughput must be back
RATE_LIMIT = 300       # requests/s the sandbox's token bucket allows in scenario 4

pytestmark = pytest.mark.slow


def ratio(scale: Scale, criterion: float, short_margin: float) -> float:
    """The issue's criterion in the long version; `short_margin` lower in CI's short one."""
    return criterion if scale.long else criterion - short_margin


class FaultRun:
    """One member delivering a backlog that a feeder keeps ahead of it, so only Wigzo limits throughput."""

    def __init__(self, bootstrap: str, topic: str, sandbox: Wigzo, members: Members, *, in_flight: int,
                 users: int, seed: int, **settings: str) -> None:
        self.bootstrap, self.topic, self.sandbox, self.group = bootstrap, topic, sandbox, f"{topic}-group"
        self.in_flight = in_flight
        latency = float(sandbox.control.faults()["latency_ms"]) / 1000
        backlog = int(3 * in_flight / latency)  # three seconds of work at full speed
        self.feeder_control = sandbox.another_control()
        self.feeder = Feeder(TrackingProducer(bootstrap, topic), deliverable(topic, seed, users),
                             ahead_of(self.feeder_control, backlog))
        self.member: Member = members.start("member", {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": self.group,
            "WIGZO_BASE_URL": sandbox.url, "WIGZO_MAX_IN_FLIGHT": str(in_flight), **settings})
        self.feeder.start()
        self.meter = RateMeter(sandbox.control)
        wait_for(lambda: sandbox.control.count() > 0, 60, "the first delivery")

    def wait_until_at_full_speed(self) -> None:
        """Until every request slot has had its connection open at once and the meter has a window of throughput:
        from here on only Wigzo limits the member."""
        wait_for(lambda: self.sandbox.control.stats()["connections_opened"] >= self.in_flight, 60,
                 f"{self.in_flight} connections open")
        wait_for(lambda: self.meter.rate() > 0, 60, "a window of throughput")

    def wait_for_rate(self, target: float, limit: float) -> None:
        """Until the last seconds' throughput reaches `target` (or `limit` seconds pass: the audit judges)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.meter.rate() < target:
            time.sleep(0.25)

    def finish(self, timeout: float = 120.0) -> list[Produced]:
        produced = self.feeder.finish()
        self.feeder_control.close()
        wait_for(lambda: committed_to_end(self.bootstrap, self.group, self.topic), timeout,
                 "the member to deliver and commit the backlog", interval=1.0)
        assert stop_member(self.member) == 0, self.member.tail()
        return produced


def test_an_outage_a_429_storm_hangs_and_a_401_phase_dead_letter_nothing_and_throughput_recovers(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    fault_seconds = scale.seconds(5)
    target = ratio(scale, 0.9, 0.15)
    sandbox = wigzo(faults=Faults(latency_ms=20))
    topic = make_topic(partitions=6, prefix="chaos-faults")
    run = FaultRun(kafka_bootstrap, topic, sandbox, members, in_flight=8, users=500, seed=3,
                   WIGZO_READ_TIMEOUT="4")
    run.wait_until_at_full_speed()
    baseline_window = (time.time(), time.time() + scale.seconds(5))
    time.sleep(scale.seconds(5))  # the measurement window
    baseline = rate(accepted_times(sandbox), *baseline_window)
    faults = [  # (name, set, clear): an outage ends by itself
        ("outage", {"outage_seconds": fault_seconds}, {}),
        ("429 storm", {"throttle_rate": 1.0, "retry_after_s": 2}, {"throttle_rate": 0.0}),
        ("hangs", {"hang_rate": 1.0}, {"hang_rate": 0.0}),
        ("401", {"unauthorized": True}, {"unauthorized": False}),
    ]
    cleared: dict[str, float] = {}
    for name, on, off in faults:
        sandbox.control.set_faults(**on)
        time.sleep(fault_seconds)  # the fault's duration, as the scenario defines it
        if off:
            sandbox.control.set_faults(**off)
        cleared[name] = time.time()
        run.wait_for_rate(target * baseline, RECOVERY_LIMIT + WINDOW)
    produced = run.finish()

    times = accepted_times(sandbox)
    recoveries = {name: recovery(times, at, target * baseline, WINDOW, horizon=RECOVERY_LIMIT + WINDOW)
                  for name, at in cleared.items()}
    answers = Counter(str(a["outcome"]) for a in sandbox.control.attempts())
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    slowest = max((r for r in recoveries.values() if r is not None), default=None)
    report(ResultRow.of("3 Wigzo faults in sequence", result, slowest,
                        f"{scale.name}; 1 member, 8 in flight, 20 ms latency, read timeout 4 s; each fault "
                        f"{fault_seconds:.0f} s; recovery = end of the first {WINDOW:.0f} s window at >= "
                        f"{target:.0%} of the {baseline:.0f}/s baseline",
                        recovery_by_fault=recoveries, answers=dict(answers)))

    assert {"503", "429", "hang", "401"} <= set(answers), f"every fault really happened: {answers}"
    assert result.missing == 0, result.missing_examples
    assert result.dead_lettered == 0, "faults of Wigzo's never dead-letter an event"
    assert result.retry_after_violations == 0, sandbox.control.retry_after_violations()[:5]
    late = {name: r for name, r in recoveries.items() if r is None or r > RECOVERY_LIMIT}
    assert not late, f"throughput not back to {target:.0%} of {baseline:.0f}/s within {RECOVERY_LIMIT:.0f} s: {late}"
    assert not members.leaked([ORG_TOKEN, API_TOKEN])


def test_a_rate_limit_is_used_to_at_least_80_percent_without_retry_after_violations(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    target = ratio(scale, 0.8, 0.1)
    sandbox = wigzo(faults=Faults(latency_ms=25))
    topic = make_topic(partitions=6, prefix="chaos-ratelimit")
    run = FaultRun(kafka_bootstrap, topic, sandbox, members, in_flight=16, users=2000, seed=4)
    run.wait_until_at_full_speed()
    unlimited_window = (time.time(), time.time() + scale.seconds(4))
    time.sleep(scale.seconds(4))  # the measurement window
    sandbox.control.set_faults(rate_limit_per_second=RATE_LIMIT)
    # the burst is spent and the client has found the rate: 429s made it lower its concurrency
    wait_for(lambda: (run.member.metric("wigzo_pipeline_concurrency_limit") or run.in_flight) < run.in_flight, 60,
             "the member to lower its concurrency limit under the rate limit")
    limited_window = (time.time(), time.time() + scale.seconds(10))
    time.sleep(scale.seconds(10))  # the measurement window
    produced = run.finish()

    times = accepted_times(sandbox)
    unlimited, limited = rate(times, *unlimited_window), rate(times, *limited_window)
    throttled = sum(a["outcome"] == 429 for a in sandbox.control.attempts())
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("4a rate limit", result, None,
                        f"{scale.name}; token bucket {RATE_LIMIT}/s (burst {RATE_LIMIT}), 1 member, 16 in flight, "
                        f"25 ms latency; sustained {limited:.0f}/s = {limited / RATE_LIMIT:.0%} of the limit "
                        f"(unlimited {unlimited:.0f}/s)", answered_429=throttled))

    assert throttled > 0, f"the member never reached the limit (unlimited {unlimited:.0f}/s): nothing was tested"
    assert limited >= target * RATE_LIMIT, f"{limited:.0f}/s is under {target:.0%} of {RATE_LIMIT}/s"
    assert result.missing == 0, result.missing_examples
    assert result.dead_lettered == 0
    assert result.retry_after_violations == 0, sandbox.control.retry_after_violations()[:5]


def test_ten_percent_random_429s_with_retry_after_3_keep_half_the_throughput(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    target = ratio(scale, 0.5, 0.1)
    sandbox = wigzo(faults=Faults(latency_ms=25))
    topic = make_topic(partitions=6, prefix="chaos-429s")
    run = FaultRun(kafka_bootstrap, topic, sandbox, members, in_flight=16, users=2000, seed=6)
    run.wait_until_at_full_speed()
    unthrottled_window = (time.time(), time.time() + scale.seconds(6))
    time.sleep(scale.seconds(6))  # the measurement window
    sandbox.control.set_faults(throttle_rate=0.1, retry_after_s=3)
    # the first Retry-Afters run out (a throttled event's retry is accepted): from here on the mix is steady
    wait_for(lambda: any(a["attempt"] >= 2 and a["outcome"] == 200 for a in sandbox.control.attempts()), 60,
             "a throttled event delivered after its Retry-After", interval=0.5)
    throttled_window = (time.time(), time.time() + scale.seconds(10))
    time.sleep(scale.seconds(10))  # the measurement window
    sandbox.control.set_faults(throttle_rate=0.0)
    produced = run.finish()

    times = accepted_times(sandbox)
    unthrottled, throttled = rate(times, *unthrottled_window), rate(times, *throttled_window)
    answered_429 = sum(a["outcome"] == 429 for a in sandbox.control.attempts())
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("4b 10% 429s, Retry-After 3", result, None,
                        f"{scale.name}; 1 member, 16 in flight, 25 ms latency, 2000 users; {throttled:.0f}/s = "
                        f"{throttled / unthrottled:.0%} of the unthrottled {unthrottled:.0f}/s",
                        answered_429=answered_429))

    assert answered_429 > 0
    assert result.missing == 0, result.missing_examples
    assert result.dead_lettered == 0
    assert result.retry_after_violations == 0, sandbox.control.retry_after_violations()[:5]
    assert throttled >= target * unthrottled, f"{throttled:.0f}/s is under {target:.0%} of {unthrottled:.0f}/s"
