"""Scenario 11: Wigzo goes down (the sandbox answers 503 to everything) while events keep arriving, so the member
pauses delivery and every partition. The lag it reports, `wigzo_pipeline_consumer_lag` summed over partitions,
must tell the truth meanwhile, which is what an operator's alert on it is for.

The true lag is asked of the broker: its high watermarks, less what the member read (its positions: the
messages it consumed, from offset 0 of a fresh topic, one member, no rebalance) or less what its group committed.
The reported lag must lie between the two (the pipeline may count either way), give or take a small margin, within
REPORT_BOUND seconds of the stream ending while the partitions stay paused. Then Wigzo comes back and the audit
runs as everywhere."""

from __future__ import annotations

import time

import pytest

from tests.chaos.audit import ResultRow, audit, deliverable, report
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Feeder,
    Member,
    Members,
    Scale,
    TrackingProducer,
    at_rate,
    committed_to_end,
    group_position,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

PARTITIONS = 6
REPORT_BOUND = 10.0  # seconds after the stream ends by which the reported lag must be the true one
OUTAGE_S = 3600.0  # longer than the run: the test ends it
LAG = "wigzo_pipeline_consumer_lag"
CONSUMED = "wigzo_pipeline_messages_consumed_total"
CIRCUIT_OPEN = "wigzo_pipeline_circuit_open"

pytestmark = [pytest.mark.slow]


def margin(true_lag: float) -> float:
    """How far the reported lag may be off: 2 %, at least 20 messages."""
    return max(20.0, 0.02 * true_lag)


def paused(member: Member) -> bool:
    return (member.metric(CIRCUIT_OPEN) or 0.0) >= 1.0


def test_the_reported_lag_tells_the_truth_while_delivery_is_paused(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    events = scale.events(3000)
    rate = 500.0 if scale.long else 150.0
    topic = make_topic(partitions=PARTITIONS, prefix="chaos-lag")
    group = f"{topic}-group"
    sandbox = wigzo()
    member = members.start("member", {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic,
                                      "KAFKA_GROUP_ID": group, "WIGZO_BASE_URL": sandbox.url})
    wait_for(lambda: member.readyz()[0] == 200, 60, "the member to join its group")
    feeder_control = sandbox.another_control()
    feeder = Feeder(TrackingProducer(kafka_bootstrap, topic), deliverable(topic, seed=11, users=500),
                    at_rate(rate, events))
    feeder.start()
    wait_for(lambda: sandbox.control.count() >= rate, 60, "a second's worth of deliveries")

    sandbox.control.set_faults(outage_seconds=OUTAGE_S)
    paused_after = wait_for(lambda: paused(member), 60, "the member to pause delivery in the outage")
    wait_for(lambda: feeder.sent >= events, events / rate + 60, "the rest of the stream to be produced")
    produced = feeder.finish()  # acknowledged, all of it: the true lag stays put from here on
    feeder_control.close()

    seen: dict[str, float] = {}

    def told() -> bool:
        position = group_position(kafka_bootstrap, group, topic)
        reported, consumed = member.metric(LAG), member.metric(CONSUMED)
        if position is None or reported is None or consumed is None:
            return False
        committed, ends = sum(position[0]), sum(position[1])
        seen.update(reported=reported, by_position=ends - consumed, by_commit=ends - committed)
        return ends - consumed - margin(ends - consumed) <= reported <= ends - committed + margin(ends - committed)

    started = time.monotonic()
    try:
        told_after: float | None = wait_for(told, REPORT_BOUND, "the reported lag to be the true one", interval=0.5)
    except AssertionError:
        told_after = None
    still_paused = paused(member)
    waited = time.monotonic() - started
    sandbox.control.set_faults(outage_seconds=0)
    wait_for(lambda: committed_to_end(kafka_bootstrap, group, topic), scale.seconds(60),
             "the member to deliver everything once Wigzo is back", interval=1.0)
    exit_code = stop_member(member)
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("11 lag while paused", result, None if told_after is None else round(told_after, 1),
                        f"{scale.name}; {events} events at {rate:.0f}/s, {PARTITIONS} partitions, 1 member; a 503 "
                        f"outage from a second into the stream, delivery paused {paused_after:.1f} s after it began; "
                        f"recovery = stream end to the reported lag within the margin of the true one (bound "
                        f"{REPORT_BOUND:.0f} s)", reported_lag=seen.get("reported"),
                        true_lag_by_position=seen.get("by_position"), true_lag_by_commit=seen.get("by_commit"),
                        checked_for_s=round(waited, 1)))

    assert exit_code == 0, member.tail()
    assert still_paused, "delivery stayed paused while the lag was checked"
    assert result.missing == 0, result.missing_examples
    assert result.dead_lettered == 0, "an outage of Wigzo's never dead-letters an event"
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
    assert told_after is not None, (
        f"the reported lag {seen.get('reported')} is not the true one (between {seen.get('by_position')} behind "
        f"the positions and {seen.get('by_commit')} behind the commits, give or take 2 %) within "
        f"{REPORT_BOUND:.0f} s while delivery is paused")
