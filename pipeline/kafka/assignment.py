"""How a pipeline gets its partitions and knows when it has read enough.

The live group subscribes and never finishes on its own; replay and redrive read fixed offset ranges under
manual assignment, outside any group, and finish once every range is read and its work is done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pipeline.kafka.admin import BrokerOffsets, caught_up
from pipeline.kafka.ledger import PartitionKey
from pipeline.model import PipelineError


class Rebalance(Protocol):
    """The pipeline's side of a rebalance; partitions as (topic, partition) keys."""

    def assigned(self, keys: list[PartitionKey]) -> None: ...
    def revoked(self, keys: list[PartitionKey]) -> None: ...
    def lost(self, keys: list[PartitionKey]) -> None: ...


class Assignment(Protocol):
    def start(self, consumer: Consumer, rebalance: Rebalance) -> None:
        """Subscribe or assign; partitions reach `rebalance.assigned`."""

    def in_scope(self, key: PartitionKey, offset: int) -> bool:
        """Whether a message just read is to be processed (False: past the range, not ours)."""

    def exhausted(self, key: PartitionKey) -> bool:
        """Nothing more to read from this partition: keep it paused."""

    def finished(self, consumer: Consumer) -> bool:
        """Everything in scope has been read (the caller also waits for its work to finish)."""


def keys_of(partitions: Iterable[TopicPartition]) -> list[PartitionKey]:
    return [(tp.topic, tp.partition) for tp in partitions]


class GroupSubscription:
    """The live consumer group: partitions come and go with rebalances.

    Given `offsets` (batch runs), it is finished when caught up: partitions were assigned and every one of
    them is read to its high watermark. A member that never got a partition, or never reached the broker, is
    not. Without it, it never finishes by itself.
    """

    CHECK_INTERVAL = 1.0  # the check is a broker round trip: ask at most this often

    def __init__(self, topics: tuple[str, ...], dlq_topic: str, offsets: BrokerOffsets | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for topic in topics:
            if topic.startswith("^"):
                _refuse_pattern_matching_dlq(topic, dlq_topic)
        self._topics = list(topics)
        self._offsets = offsets
        self._clock = clock
        self._assigned: set[PartitionKey] = set()
        self._last_check = -self.CHECK_INTERVAL
        self._caught_up = False

    @property
    def assigned(self) -> frozenset[PartitionKey]:
        return frozenset(self._assigned)

    def start(self, consumer: Consumer, rebalance: Rebalance) -> None:
        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            keys = keys_of(partitions)
            self._assigned.update(keys)
            rebalance.assigned(keys)

        def on_release(handler: Callable[[list[PartitionKey]], None],
                       ) -> Callable[[Consumer, list[TopicPartition]], None]:
            def release(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
                keys = keys_of(partitions)
                handler(keys)
                self._assigned.difference_update(keys)
            return release

        consumer.subscribe(self._topics, on_assign=on_assign, on_revoke=on_release(rebalance.revoked),
                           on_lost=on_release(rebalance.lost))

    def in_scope(self, key: PartitionKey, offset: int) -> bool:
        return True

    def exhausted(self, key: PartitionKey) -> bool:
        return False

    def finished(self, consumer: Consumer) -> bool:
        """Caught up as of the latest check (made at most once per CHECK_INTERVAL)."""
        if self._offsets is None or not self._assigned:
            return False
        now = self._clock()
        if now - self._last_check >= self.CHECK_INTERVAL:
            self._last_check = now
            try:
                self._caught_up = caught_up(consumer, sorted(self._assigned), self._offsets)
            except KafkaException:  # the broker did not answer in time: not known to be caught up
                self._caught_up = False
        return self._caught_up


class OffsetRanges:
    """Replay and redrive: read [start, end) of each partition under manual assignment."""

    def __init__(self, ranges: dict[PartitionKey, tuple[int, int]]) -> None:
        self._ranges = ranges
        self._complete = {key: start >= end for key, (start, end) in ranges.items()}

    def start(self, consumer: Consumer, rebalance: Rebalance) -> None:
        reading = {key: start for key, (start, end) in self._ranges.items() if start < end}
        rebalance.assigned(list(reading))
        consumer.assign([TopicPartition(topic, partition, start) for (topic, partition), start in reading.items()])

    def in_scope(self, key: PartitionKey, offset: int) -> bool:
        end = self._ranges[key][1]
        self._complete[key] = offset + 1 >= end
        return offset < end

    def exhausted(self, key: PartitionKey) -> bool:
        return self._complete.get(key, True)

    def finished(self, consumer: Consumer) -> bool:
        """The consumer position also covers ranges that end in transaction markers rather than messages."""
        reading = [key for key, complete in self._complete.items() if not complete]
        if reading:
            positions = consumer.position([TopicPartition(topic, partition) for topic, partition in reading])
            for key, tp in zip(reading, positions, strict=True):
                self._complete[key] = tp.offset >= self._ranges[key][1]
        return all(self._complete.values())


def _refuse_pattern_matching_dlq(pattern: str, dlq_topic: str) -> None:
    """A pattern subscription must not read our own dead letters back in."""
    if not dlq_topic:
        raise PipelineError(f"with a topic pattern ({pattern!r}) set DLQ_TOPIC explicitly: per-topic "
                            "'<topic>.dlq' names could match the pattern and be consumed again")
    if re.match(pattern[1:], dlq_topic):
        raise PipelineError(f"topic pattern {pattern!r} matches the dead-letter topic {dlq_topic!r}; "
                            "narrow the pattern or choose another DLQ_TOPIC")
