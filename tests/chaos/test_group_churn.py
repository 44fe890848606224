"""Scenario 1: a 3-member group on 12 partitions loses a member to SIGKILL every few seconds while events keep
arriving; each killed member is replaced at once. Nothing may go missing, and once the churn stops the group
drains within a bound. Duplicates (work finished but not committed when a member died) are counted.

Members run as docs/deployment.md recommends for churn (cooperative-sticky, static membership), with the
session timeout at the broker's minimum so a vanished member's partitions move within seconds. A replacement
alternately keeps the killed member's instance id (a container restarting in its pod) and takes a new one (a
pod rescheduled), so both paths are exercised.
"""

from __future__ import annotations

import signal
import time

import pytest

from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import Faults
from tests.chaos.audit import ResultRow, audit, report
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
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

PARTITIONS = 12
MEMBERS = 3
KILL_EVERY = 4.0      # seconds between SIGKILLs
DRAIN_BOUND = 60.0    # seconds from the end of the churn until everything is committed
SESSION_TIMEOUT_MS = 6000  # the broker's group.min.session.timeout.ms

pytestmark = pytest.mark.slow


def test_sigkilling_members_every_few_seconds_loses_nothing_and_the_group_drains(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    churn_seconds = scale.seconds(20)
    events = scale.events(6000)
    topic = make_topic(partitions=PARTITIONS, prefix="chaos-churn")
    group = f"{topic}-group"
    sandbox = wigzo(faults=Faults(latency_ms=5))
    samples = SampleStream(seed=1, users=200).messages(events)
    producer = TrackingProducer(kafka_bootstrap, topic)
    producer.send(next(samples) for _ in range(events // 4))  # a backlog to start on; the rest arrives during churn

    def start(slot: int, instance: str) -> Member:
        return members.start(f"slot{slot}-{instance}", {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
            "WIGZO_BASE_URL": sandbox.url, "WIGZO_MAX_IN_FLIGHT": "16",
            "KAFKA_OPT_PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky",
            "KAFKA_OPT_GROUP_INSTANCE_ID": instance, "KAFKA_OPT_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "KAFKA_OPT_HEARTBEAT_INTERVAL_MS": "1000"})

    pods = dict.fromkeys(range(MEMBERS), 0)  # each slot's current pod: its instance id
    running = {slot: start(slot, f"{group}-pod{slot}-0") for slot in range(MEMBERS)}
    wait_for(lambda: sandbox.control.count() > 0, 60, "the first delivery")
    feeder = Feeder(producer, samples, at_rate((events - events // 4) / churn_seconds, events - events // 4))
    feeder.start()
    kills = 0
    churn_end = time.monotonic() + churn_seconds
    while time.monotonic() < churn_end:
        time.sleep(min(KILL_EVERY, max(0.0, churn_end - time.monotonic())))
        slot = kills % MEMBERS
        victim = running[slot]
        assert victim.alive, f"{victim.name} died on its own\n{victim.tail()}"
        victim.signal(signal.SIGKILL)
        victim.wait(timeout=10)
        kills += 1
        pods[slot] += kills % 2  # odd kills: the pod is rescheduled (a new id); even ones: it restarts in place
        running[slot] = start(slot, f"{group}-pod{slot}-{pods[slot]}")
    produced = feeder.finish()
    churn_stopped = time.monotonic()

    drained = wait_for(lambda: committed_to_end(kafka_bootstrap, group, topic), DRAIN_BOUND,
                       "the group to commit everything after the churn", interval=1.0)
    exits = {member.name: stop_member(member) for member in running.values()}
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("1 group churn (SIGKILL)", result, round(drained, 1),
                        f"{scale.name}; {MEMBERS} members, {PARTITIONS} partitions, {kills} SIGKILLs every "
                        f"{KILL_EVERY:.0f} s over {churn_seconds:.0f} s, replaced at once; cooperative-sticky, "
                        f"static membership, session timeout {SESSION_TIMEOUT_MS} ms; recovery = drain time after "
                        f"the churn (bound {DRAIN_BOUND:.0f} s)", kills=kills,
                        churn_overrun_s=round(churn_stopped - churn_end, 1)))

    assert kills >= churn_seconds // KILL_EVERY - 1
    assert all(code == 0 for code in exits.values()), (exits, members.tails())
    assert result.missing == 0, result.missing_examples
    assert result.double_outcomes == 0
    assert result.retry_after_violations == 0
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
