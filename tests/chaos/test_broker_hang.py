"""Scenario 9: the broker hangs. Its process is stopped (SIGSTOP) for a while under a member consuming a steady
stream, then continued (SIGCONT). Unlike a broker that is gone (scenario 2), a hung one keeps its connections
open and answers nothing, so no request fails for a long time: the member must notice the silence itself.

What must hold: within KAFKA_STALL_SECONDS (+ DETECTION_SLACK) of the hang /readyz is 503 with a reason saying
`no answer`; after SIGCONT an INFO line about Kafka says how long it did not answer (a number of seconds near the
hang's length: from the hang less the threshold to 30 s past it); nothing is missing. Reported: when /readyz said
so, whether a WARNING line named the broker during the hang, the longest time without a delivery, how long after
SIGCONT the group had committed everything the broker held by then, and duplicates.

The short version hangs the broker 12 s with the stall threshold lowered to 3 s; the long one 40 s with the
default threshold (15 s). The broker is the test's own (as in scenario 2); the shared one is never touched."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.dev.sandbox import Faults
from tests.chaos.audit import ResultRow, accepted_times, audit, deliverable, report
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
    own_broker,
    stop_member,
)
from tests.conftest import wait_for

PARTITIONS = 6
RATE = 120.0  # events a second, produced throughout
DEFAULT_STALL_S = 15.0  # KAFKA_STALL_SECONDS' default, which the long version keeps
SHORT_STALL_S = 3.0
DETECTION_SLACK = 5.0  # seconds beyond the stall threshold by which /readyz must say so
CATCH_UP_BOUND = 180.0  # seconds after SIGCONT by which the group must have committed what the broker held
SECONDS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s|sec|seconds)\b")

# It stops a broker of its own and times what the member notices: like scenario 2, `make test` runs it alone.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


@contextmanager
def stopped(pid: int) -> Iterator[float]:
    """The process stopped (SIGSTOP) for the block, continued (SIGCONT) after it whatever happens; yields when it
    was stopped (wall clock)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        os.kill(pid, signal.SIGCONT)


def _at(record: dict[str, Any]) -> float:
    """A JSON log line's time, wall clock."""
    return datetime.fromisoformat(str(record["ts"])).timestamp()


def _says_how_long(message: str, low: float, high: float) -> bool:
    return any(low <= float(found) <= high for found in SECONDS.findall(message))


def _first_line(member: Member, since: float, until: float, levels: tuple[str, ...], about: tuple[str, ...],
                how_long: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """The member's first log line between `since` and `until` at one of `levels` that mentions one of `about`
    (and a duration between `how_long`'s bounds, when given)."""
    for record in member.log_records():
        message = str(record.get("msg", ""))
        if (record.get("level") in levels and since <= _at(record) <= until and any(word in message for word in about)
                and (how_long is None or _says_how_long(message, *how_long))):
            return record
    return None


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without an accepted request."""
    inside = [start, *(t for t in times if start <= t <= end), end]
    return max(later - earlier for earlier, later in pairwise(inside))


def test_a_hung_broker_is_reported_within_the_stall_threshold_and_nothing_is_lost(
        tmp_path: Path, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    hang_s = 40.0 if scale.long else 12.0
    threshold = DEFAULT_STALL_S if scale.long else SHORT_STALL_S
    sandbox = wigzo(faults=Faults(latency_ms=5))
    with own_broker(tmp_path / "kafka") as kafka:
        bootstrap, topic = kafka.bootstrap, "chaos-broker-hang"
        group = f"{topic}-group"
        admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a collected client cancels its futures
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)
        member = members.start("member", {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
            "WIGZO_BASE_URL": sandbox.url, "KAFKA_STALL_SECONDS": None if scale.long else f"{threshold:g}"})
        wait_for(lambda: member.readyz()[0] == 200, 60, "the member to join its group")
        feeder_control = sandbox.another_control()
        feeder = Feeder(TrackingProducer(bootstrap, topic), deliverable(topic, seed=9, users=200),
                        at_rate(RATE, 10**7))
        feeder.start()
        wait_for(lambda: sandbox.control.count() >= 3 * RATE, 60, "three seconds of steady deliveries")

        broker = kafka.pid()
        assert broker is not None
        detected: float | None = None
        unhealthy = False
        with stopped(broker) as stopped_at:
            while time.time() < stopped_at + hang_s:  # the hang's length, as the scenario defines it
                status, reasons = member.readyz()
                if detected is None and status != 200 and any("no answer" in reason for reason in reasons):
                    detected = time.time() - stopped_at
                health = member.get("/healthz")
                unhealthy |= health is not None and health.status_code != 200
                time.sleep(0.25)
        continued_at = time.time()
        assert member.alive, member.tail()

        held: list[int] = []  # the broker's partition ends when it first answered again

        def caught_up() -> bool:
            position = group_position(bootstrap, group, topic)
            if position is None:
                return False
            if not held:
                held.append(sum(position[1]))
            return sum(position[0]) >= held[0]

        wait_for(caught_up, CATCH_UP_BOUND, "the group to commit what the broker held", interval=0.5)
        caught_up_at = time.time()
        produced = feeder.finish()
        feeder_control.close()
        wait_for(lambda: committed_to_end(bootstrap, group, topic), 60, "the group to finish the stream",
                 interval=1.0)
        warned = _first_line(member, stopped_at, continued_at, ("WARNING", "ERROR"), (bootstrap,))
        told = _first_line(member, continued_at - 0.5, time.time(), ("INFO",), ("Kafka", bootstrap),
                           how_long=(hang_s - threshold - 3, hang_s + 30))
        exit_code = stop_member(member)
        result = audit(bootstrap, topic, produced, sandbox)

    times = accepted_times(sandbox)
    resumed = next((t - continued_at for t in times if t >= continued_at), None)
    report(ResultRow.of("9 broker hang", result, round(caught_up_at - continued_at, 1),
                        f"{scale.name}; own broker SIGSTOPped {hang_s:.0f} s under 1 member, {PARTITIONS} partitions, "
                        f"{RATE:.0f} events/s produced throughout, stall threshold {threshold:g} s; recovery = SIGCONT "
                        f"to the group's commits reaching the ends the broker held when it answered again",
                        readyz_no_answer_after_s=None if detected is None else round(detected, 1),
                        healthz_unhealthy_during_hang=unhealthy,
                        warning_during_hang_after_s=None if warned is None else round(_at(warned) - stopped_at, 1),
                        warning_during_hang=None if warned is None else warned["msg"],
                        info_after_sigcont=None if told is None else told["msg"],
                        longest_gap_without_delivery_s=round(_longest_gap(times, stopped_at - 2, caught_up_at), 1),
                        first_delivery_after_sigcont_s=None if resumed is None else round(resumed, 1)))

    assert exit_code == 0, member.tail()
    assert result.missing == 0, result.missing_examples
    assert result.double_outcomes == 0
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
    assert detected is not None and detected <= threshold + DETECTION_SLACK, (
        f"/readyz said 'no answer' {detected and round(detected, 1)} s into the {hang_s:.0f} s hang; the bound "
        f"is {threshold + DETECTION_SLACK:g} s (threshold {threshold:g} s + {DETECTION_SLACK:g} s)")
    assert told is not None, "no INFO line after SIGCONT said how long Kafka did not answer"
