"""How a pipeline gets its partitions and knows when it has read enough.

The live group subscribes and never finishes on its own; replay and redrive read fixed offset ranges under
manual assignment, outside any group, and finish once every range is read and its work is done.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.checkpoint import PartitionKey
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
    """The live consumer group: partitions come and go with rebalances; it never finishes by itself."""

    def __init__(self, topics: tuple[str, ...], dlq_topic: str) -> None:
        for topic in topics:
            if topic.startswith("^"):
                _refuse_pattern_matching_dlq(topic, dlq_topic)
        self._topics = list(topics)

    def start(self, consumer: Consumer, rebalance: Rebalance) -> None:
        def adapt(handler: Callable[[list[PartitionKey]], None]) -> Callable[[Consumer, list[TopicPartition]], None]:
            return lambda _consumer, partitions: handler(keys_of(partitions))

        consumer.subscribe(self._topics, on_assign=adapt(rebalance.assigned), on_revoke=adapt(rebalance.revoked),
                           on_lost=adapt(rebalance.lost))

    def in_scope(self, key: PartitionKey, offset: int) -> bool:
        return True

    def exhausted(self, key: PartitionKey) -> bool:
        return False

    def finished(self, consumer: Consumer) -> bool:
        return False


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
