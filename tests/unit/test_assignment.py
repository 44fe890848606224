"""When a batch run may say it is done: caught up on every assigned partition, as of a check made once a second."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from pipeline.kafka.assignment import GroupSubscription, caught_up
from pipeline.kafka.ledger import PartitionKey


class FakeConsumer:
    """Positions only: they are local to the consumer; -1001 where it has fetched nothing."""

    def __init__(self, position: dict[int, int]) -> None:
        self.position_of = position

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_of.get(tp.partition, -1001)) for tp in tps]


class FakeOffsets:
    """Partition ends and committed offsets as the admin connection would answer, counting the round trips."""

    def __init__(self, marks: dict[int, tuple[int, int]], committed: dict[int, int]) -> None:
        self.marks, self.committed_of = marks, committed
        self.round_trips = 0

    def ends(self, keys: list[PartitionKey], spec: OffsetSpec) -> dict[PartitionKey, int]:
        self.round_trips += 1
        latest = spec == OffsetSpec.latest()
        return {key: self.marks[key[1]][1 if latest else 0] for key in keys}

    def committed(self, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        self.round_trips += 1
        return {key: self.committed_of.get(key[1], -1001) for key in keys}


KEYS = [("t", 0), ("t", 1)]


def test_caught_up_needs_every_partition_at_its_high_watermark() -> None:
    assert caught_up(FakeConsumer({0: 10, 1: 5}), KEYS, FakeOffsets({0: (0, 10), 1: (0, 5)}, {}))  # type: ignore[arg-type]
    assert not caught_up(FakeConsumer({0: 10, 1: 4}), KEYS, FakeOffsets({0: (0, 10), 1: (0, 5)}, {}))  # type: ignore[arg-type]


def test_an_unfetched_partition_counts_when_empty_or_committed_to_its_end() -> None:
    def check(marks: dict[int, tuple[int, int]], committed: dict[int, int]) -> bool:
        return caught_up(FakeConsumer({0: 10}), KEYS, FakeOffsets(marks, committed))  # type: ignore[arg-type]

    assert check({0: (0, 10), 1: (3, 3)}, {}), "partition 1 is empty"
    assert check({0: (0, 10), 1: (0, 7)}, {1: 7}), "committed at its end"
    assert not check({0: (0, 10), 1: (0, 7)}, {1: 6}), "one message unread"
    assert not check({0: (0, 10), 1: (0, 7)}, {}), "never committed"


def test_the_answer_holds_between_checks_and_nothing_is_finished_before_an_assignment() -> None:
    now = [0.0]
    offsets = FakeOffsets({0: (0, 10)}, {})
    subscription = GroupSubscription(("t",), "", offsets, clock=lambda: now[0])  # type: ignore[arg-type]
    consumer = FakeConsumer({0: 10})
    assert not subscription.finished(consumer), "no partition assigned yet"  # type: ignore[arg-type]
    subscription._assigned.add(("t", 0))
    assert subscription.finished(consumer)  # type: ignore[arg-type]
    trips = offsets.round_trips
    offsets.marks[0] = (0, 11)  # a new message arrived
    now[0] += 0.5
    assert subscription.finished(consumer), "within a second the last answer stands"  # type: ignore[arg-type]
    assert offsets.round_trips == trips, "without asking the broker"
    now[0] += 0.6
    assert not subscription.finished(consumer)  # type: ignore[arg-type]


def test_a_live_subscription_never_finishes_by_itself() -> None:
    subscription = GroupSubscription(("t",), "")
    subscription._assigned.add(("t", 0))
    assert not subscription.finished(FakeConsumer({0: 10}))  # type: ignore[arg-type]
