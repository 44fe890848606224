"""How a pipeline gets its partitions and knows when it has read enough.

The live group subscribes and never finishes on its own; replay and redrive read fixed offset ranges under
manual assignment, outside any group, and finish once every range is read and its work is done.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

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


class BrokerOffsets:
    """Partitions' ends and the group's committed offsets, asked over an admin connection of its own: on the
    consumer's connection each request waits behind the pending fetch (up to fetch.wait.max.ms), which once
    made a caught-up check cost seconds and throttled the whole loop."""

    def __init__(self, config: dict[str, Any], group_id: str, timeout: float = 5.0) -> None:
        self._admin = AdminClient(config)
        self._group_id = group_id
        self._timeout = timeout

    def ends(self, keys: list[PartitionKey], spec: OffsetSpec) -> dict[PartitionKey, int]:
        futures = self._admin.list_offsets({TopicPartition(t, p): spec for t, p in keys},
                                           request_timeout=self._timeout)
        return {(tp.topic, tp.partition): future.result(timeout=self._timeout).offset for tp, future in futures.items()}

    def committed(self, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        request = ConsumerGroupTopicPartitions(self._group_id, [TopicPartition(t, p) for t, p in keys])
        answer = self._admin.list_consumer_group_offsets([request])[self._group_id].result(timeout=self._timeout)
        return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}


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


def caught_up(consumer: Consumer, keys: list[PartitionKey], offsets: BrokerOffsets) -> bool:
    """Every partition read to its high watermark. A partition this consumer has not fetched from has no
    position: it is caught up when it is empty or the group's committed offset is already at its end."""
    positions = {(tp.topic, tp.partition): tp.offset
                 for tp in consumer.position([TopicPartition(topic, partition) for topic, partition in keys])}
    highs = offsets.ends(keys, OffsetSpec.latest())
    if any(0 <= positions[key] < highs[key] for key in keys):
        return False
    unfetched = [key for key in keys if positions[key] < 0]
    if not unfetched:
        return True
    lows = offsets.ends(unfetched, OffsetSpec.earliest())
    committed = offsets.committed(unfetched)
    return all(highs[key] <= max(lows[key], committed.get(key, -1)) for key in unfetched)


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
