"""Scenario 8: a backlog of big messages (~750 KB each) is already in the topic when a member starts. Whatever they
become, dead-lettered as EventTooLarge under the default MAX_EVENT_BYTES or delivered with it at 1 MiB, every one
ends in exactly one outcome, and the member's peak RSS stays within its memory budget (MEMORY_BUDGET_MB, default
256), so the 512 Mi limit of the Kubernetes manifest holds with room to spare.

Peak RSS is the member process's VmHWM (the kernel's high-water mark of its resident memory), read once it has
committed the whole backlog, just before it is stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import pytest

from pipeline.config import Settings
from pipeline.dev.samples import SampleMessage
from tests.chaos.audit import ResultRow, audit, dry_run_settings, report
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Members,
    Scale,
    committed_to_end,
    produce,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

MESSAGE_BYTES = 750_000
BUDGET_MIB = Settings().memory_budget_mb  # MEMORY_BUDGET_MB's default, which these runs keep
DELIVERED_LIMIT = 1_048_576  # MAX_EVENT_BYTES of the delivered run; the sandbox takes bodies up to 1 MiB too
PARTITIONS = 6

pytestmark = [pytest.mark.slow]


def big_messages(count: int, run: str) -> Iterator[SampleMessage]:
    """Track events of ~MESSAGE_BYTES each (one long property), keyed by their user; the dry run maps each to one
    request when MAX_EVENT_BYTES lets it through, and rejects it as too large otherwise."""
    for n in range(count):
        user = f"user-{n % 50:02d}"
        event = {"type": "track", "event": "Note Saved", "userId": user, "messageId": f"big-{run}-{n}",
                 "timestamp": "2026-11-01T00:00:00.000Z", "properties": {"note": "x" * MESSAGE_BYTES}}
        yield SampleMessage(user.encode(), orjson.dumps(event), "track:big")


@pytest.mark.parametrize("max_event_bytes", [None, DELIVERED_LIMIT], ids=["dead-lettered", "delivered"])
def test_a_backlog_of_big_messages_stays_within_the_memory_budget(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale,
        max_event_bytes: int | None) -> None:
    count = scale.events(150, long=1000)
    topic = make_topic(partitions=PARTITIONS, prefix="chaos-big")
    sandbox = wigzo()
    produced = produce(kafka_bootstrap, topic, big_messages(count, topic))
    limit = max_event_bytes or Settings().max_event_bytes

    started = time.monotonic()
    member = members.start("big", {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": f"{topic}-group",
        "WIGZO_BASE_URL": sandbox.url, "MAX_EVENT_BYTES": None if max_event_bytes is None else str(max_event_bytes)})
    wait_for(lambda: committed_to_end(kafka_bootstrap, f"{topic}-group", topic), scale.seconds(120),
             "the member to finish the backlog", interval=1.0)
    duration = time.monotonic() - started
    peak = member.peak_rss_mib()
    exit_code = stop_member(member)
    result = audit(kafka_bootstrap, topic, produced, sandbox,
                   settings=replace(dry_run_settings(topic), max_event_bytes=limit))
    outcome = "delivered" if max_event_bytes else "dead-lettered"
    report(ResultRow.of(f"8 big-message backlog, {outcome}", result, None,
                        f"{scale.name}; {count} messages of ~{MESSAGE_BYTES // 1000} KB in the topic before the member "
                        f"started, {PARTITIONS} partitions, 1 member, MAX_EVENT_BYTES {limit}, default memory budget; "
                        f"peak RSS {peak or 0:.0f} MiB (VmHWM) against {BUDGET_MIB} MiB; done in {duration:.1f} s",
                        peak_rss_mib=None if peak is None else round(peak), budget_mib=BUDGET_MIB,
                        duration_s=round(duration, 1)))

    assert exit_code == 0, member.tail()
    assert result.missing == 0, result.missing_examples
    assert result.double_outcomes == 0 and result.letter_repeats == 0
    assert (result.delivered if max_event_bytes else result.dead_lettered) == count
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
    assert peak is not None, "the member's peak RSS was read while it ran"
    assert peak <= BUDGET_MIB, f"peak RSS {peak:.0f} MiB is over the {BUDGET_MIB} MiB memory budget"
