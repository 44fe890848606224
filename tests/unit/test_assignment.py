"""When a batch run may say it is done: caught up on every assigned partition, as of a check made once a second."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from pipeline.kafka.assignment import GroupSubscription, caught_up


class FakeConsumer:
    """Positions, watermarks and committed offsets per partition, and a count of broker round trips."""

    def __init__(self, position: dict[int, int], marks: dict[int, tuple[int, int]], committed: dict[int, int]) -> None:
        self.position_of, self.marks, self.committed_of = position, marks, committed
        self.round_trips = 0

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_of.get(tp.partition, -1001)) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        self.round_trips += 1
        return self.marks[tp.partition]

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        self.round_trips += 1
        return [TopicPartition(tp.topic, tp.partition, self.committed_of.get(tp.partition, -1001)) for tp in tps]


def test_caught_up_needs_every_partition_at_its_high_watermark() -> None:
    keys = [("t", 0), ("t", 1)]
    assert caught_up(FakeConsumer({0: 10, 1: 5}, {0: (0, 10), 1: (0, 5)}, {}), keys)
    assert not caught_up(FakeConsumer({0: 10, 1: 4}, {0: (0, 10), 1: (0, 5)}, {}), keys)


def test_an_unfetched_partition_counts_when_empty_or_committed_to_its_end() -> None:
    keys = [("t", 0), ("t", 1)]
    assert caught_up(FakeConsumer({0: 10}, {0: (0, 10), 1: (3, 3)}, {}), keys), "partition 1 is empty"
    assert caught_up(FakeConsumer({0: 10}, {0: (0, 10), 1: (0, 7)}, {1: 7}), keys), "committed at its end"
    assert not caught_up(FakeConsumer({0: 10}, {0: (0, 10), 1: (0, 7)}, {1: 6}), keys), "one message unread"
    assert not caught_up(FakeConsumer({0: 10}, {0: (0, 10), 1: (0, 7)}, {}), keys), "never committed"


def test_the_answer_holds_between_checks_and_nothing_is_finished_before_an_assignment() -> None:
    now = [0.0]
    subscription = GroupSubscription(("t",), "", clock=lambda: now[0])
    consumer = FakeConsumer({0: 10}, {0: (0, 10)}, {})
    assert not subscription.finished(consumer), "no partition assigned yet"
    subscription._assigned.add(("t", 0))
    assert subscription.finished(consumer)
    trips = consumer.round_trips
    consumer.marks[0] = (0, 11)  # a new message arrived
    now[0] += 0.5
    assert subscription.finished(consumer), "within a second the last answer stands, without asking the broker"
    assert consumer.round_trips == trips
    now[0] += 0.6
    assert not subscription.finished(consumer)
