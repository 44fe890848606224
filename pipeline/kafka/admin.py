"""Kafka administration in one place: whether Kafka answers (and if not, why, in words an operator can act on),
topics made sure of, the dead-letter topics sources write to (by `pipeline.config.dead_letter_topic`) and with
how many partitions, and partition ends, committed offsets and lag.

The pipeline and every operator command ask these questions; answering them here gives each of Kafka's errors
one meaning and each question one rule, whoever asks.
"""

from __future__ import annotations

import re
from concurrent.futures import Future
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic, OffsetSpec

from pipeline.config import dead_letter_topic
from pipeline.kafka.ledger import PartitionKey
from pipeline.model import PipelineError
from pipeline.telemetry.logs import with_kafka_logging

ANSWER_MARGIN = 2.0  # seconds a future is awaited beyond its request's own timeout, so the request's error comes first

# ---- what Kafka's errors mean ------------------------------------------------------------------------------


class Trouble(StrEnum):
    """What kind of problem an error is: the watch reports the first two while they last, and stops the run on
    credentials and authorization, which no retry fixes."""

    UNREACHABLE = "unreachable"
    MISSING_TOPIC = "missing topic"
    CREDENTIALS = "credentials"
    AUTHORIZATION = "authorization"
    NO_ANSWER = "no answer"  # connected, but the request timed out: a hang, a wrong listener, a firewall
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Explanation:
    trouble: Trouble
    fix: str  # what to check or change, named as the operator sets it


_BROKER_DOWN = Explanation(Trouble.UNREACHABLE, "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up")
_SASL = Explanation(Trouble.CREDENTIALS, "check the SASL settings (KAFKA_OPT_SASL_MECHANISMS, KAFKA_OPT_SASL_USERNAME, "
                                         "KAFKA_OPT_SASL_PASSWORD)")
_MISSING_TOPIC = Explanation(Trouble.MISSING_TOPIC, "check KAFKA_TOPICS, or create the topic")
EXPLANATIONS: dict[int, Explanation] = {
    KafkaError._TRANSPORT: _BROKER_DOWN,
    KafkaError._ALL_BROKERS_DOWN: _BROKER_DOWN,
    KafkaError._RESOLVE: Explanation(Trouble.UNREACHABLE,
                                     "check the host names in KAFKA_BOOTSTRAP_SERVERS and this host's DNS"),
    KafkaError._TIMED_OUT: Explanation(Trouble.NO_ANSWER,
                                       "check KAFKA_BOOTSTRAP_SERVERS names a Kafka listener, that "
                                       "KAFKA_OPT_SECURITY_PROTOCOL matches it, and that no firewall drops the "
                                       "traffic"),
    KafkaError.UNKNOWN_TOPIC_OR_PART: _MISSING_TOPIC,
    KafkaError._UNKNOWN_TOPIC: _MISSING_TOPIC,
    KafkaError._AUTHENTICATION: _SASL,
    KafkaError.SASL_AUTHENTICATION_FAILED: _SASL,
    KafkaError._SSL: Explanation(Trouble.CREDENTIALS,
                                 "check KAFKA_OPT_SECURITY_PROTOCOL and the broker's CA (KAFKA_OPT_SSL_CA_LOCATION)"),
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Explanation(Trouble.AUTHORIZATION,
                                                       "grant this principal DESCRIBE and READ on the source "
                                                       "topics, and CREATE and WRITE on the dead-letter topic"),
    KafkaError.GROUP_AUTHORIZATION_FAILED: Explanation(Trouble.AUTHORIZATION, "grant this principal DESCRIBE and "
                                                                              "READ on the consumer group"),
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Explanation(Trouble.AUTHORIZATION,
                                                         "grant this principal the cluster permission the request "
                                                         "needs (e.g. IDEMPOTENT_WRITE for the dead-letter producer)"),
}
_OTHER = Explanation(Trouble.OTHER, _BROKER_DOWN.fix)


def explain(error: KafkaError) -> Explanation:
    return EXPLANATIONS.get(error.code(), _OTHER)


class KafkaErrors:
    """librdkafka's error callback (`error_cb`) for a client whose failed requests must say why: a failed request
    only says that it failed, while the errors reported meanwhile say why (refused, DNS, TLS, SASL). They arrive
    when the client is polled; `forward` also gets each one (the writer's KafkaWatch logs them)."""

    def __init__(self, forward: Callable[[KafkaError], None] | None = None) -> None:
        self._seen: list[KafkaError] = []
        self._forward = forward

    def __call__(self, error: KafkaError) -> None:
        self._seen.append(error)
        if self._forward is not None:
            self._forward(error)

    def clear(self) -> None:
        self._seen.clear()

    def all_down(self) -> bool:
        """librdkafka has given up on every broker for now (refused, DNS): waiting longer rarely helps."""
        return any(error.code() == KafkaError._ALL_BROKERS_DOWN for error in self._seen)

    def reason(self, failure: KafkaError, waited: float) -> KafkaError:
        """Why `failure` happened: the latest specific error (a long-lived client's stale ones come first); without
        one, a client that never saw every broker down was connected, or still connecting, and got no answer."""
        specific = [error for error in self._seen if error.code() != KafkaError._ALL_BROKERS_DOWN]
        if specific:
            return specific[-1]
        if not self.all_down():
            return KafkaError(KafkaError._TIMED_OUT, f"no answer to a metadata request within {waited:g}s")
        return failure


class KafkaUnreachable(PipelineError):
    """Kafka did not answer a metadata request: `reason` is librdkafka's most specific error, `fix` what to check."""

    def __init__(self, reason: KafkaError) -> None:
        self.reason = reason
        self.fix = explain(reason).fix
        super().__init__(f"cannot reach Kafka ({reason.str()}); {self.fix}")


def cluster_metadata(client: AdminClient | Consumer, errors: KafkaErrors, timeout: float, *, topic: str | None = None,
                     fail_fast: bool = False) -> ClusterMetadata:
    """Kafka's metadata (of `topic` alone, if given), or KafkaUnreachable saying why not; `errors` must be the
    client's error_cb. Waits up to `timeout`; `fail_fast` gives up as soon as librdkafka reports every broker
    down, for a check that must answer now rather than wait out a broker's restart."""
    errors.clear()
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            return client.list_topics(topic, timeout=min(1.0, remaining) if fail_fast else remaining)
        except KafkaException as exc:
            client.poll(0)  # serves the queued error callbacks
            if (fail_fast and errors.all_down()) or time.monotonic() >= deadline:
                raise KafkaUnreachable(errors.reason(exc.args[0], timeout)) from None


# ---- topics --------------------------------------------------------------------------------------------------


class TopicNotFound(PipelineError):
    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic!r} does not exist; check the name (and KAFKA_BOOTSTRAP_SERVERS)")


def partitions_in(metadata: ClusterMetadata, topic: str) -> list[int]:
    """The topic's partitions; TopicNotFound when it does not exist or this principal may not describe it."""
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise TopicNotFound(topic)
    return sorted(found.partitions)


class TopicCreateError(PipelineError):
    """Kafka did not create a topic that does not exist: it refused (`reason`), or did not answer (`reason` None)."""

    def __init__(self, topic: str, partitions: int, reason: KafkaError | None, timeout: float) -> None:
        self.topic, self.partitions, self.reason = topic, partitions, reason
        super().__init__(f"topic {topic!r} does not exist and could not be created: {reason.str()}" if reason
                         else f"topic {topic!r} does not exist and creating it timed out after {timeout:.0f}s")


@dataclass(frozen=True, slots=True)
class EnsuredTopic:
    partitions: int
    created: bool  # by this call; with validate_only: the broker confirmed this principal may create it


def ensure_topic(admin: AdminClient, metadata: ClusterMetadata, topic: str, partitions: int, timeout: float, *,
                 validate_only: bool = False) -> EnsuredTopic:
    """The topic as `metadata` shows it, else created with `partitions`; one that someone else (another member)
    created meanwhile counts as existing. The broker waits up to `timeout` for the creation to finish, so the
    topic is usable on return. `validate_only` creates nothing: it asks whether the creation would succeed.
    Raises TopicCreateError, or KafkaUnreachable when Kafka stops answering before the topic is known."""
    existing = metadata.topics.get(topic)
    if existing is not None and existing.error is None:
        return EnsuredTopic(len(existing.partitions), created=False)
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions)], validate_only=validate_only,
                                 operation_timeout=timeout, request_timeout=timeout + ANSWER_MARGIN)[topic]
    try:
        future.result(timeout=timeout + 2 * ANSWER_MARGIN)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise TopicCreateError(topic, partitions, exc.args[0], timeout) from None
        try:
            current = admin.list_topics(topic, timeout=timeout).topics[topic]
        except KafkaException as again:
            raise KafkaUnreachable(again.args[0]) from None
        return EnsuredTopic(len(current.partitions), created=False)
    except TimeoutError:
        raise TopicCreateError(topic, partitions, None, timeout) from None
    if not validate_only:
        _wait_until_described(admin, topic, timeout)
    return EnsuredTopic(partitions, created=True)


def _wait_until_described(admin: AdminClient, topic: str, timeout: float) -> None:
    """The controller has created the topic, but the broker's metadata may take a moment longer to show it
    (KRaft): wait for it, so the topic is usable on return."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise KafkaUnreachable(exc.args[0]) from None
        if (found is not None and found.error is None and found.partitions) or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def dead_letter_feeds(sources: Iterable[str], dlq_topic: str) -> dict[str, list[str]]:
    """Each dead-letter topic these sources write to (`dead_letter_topic`), with the sources that feed it."""
    feeds: dict[str, list[str]] = {}
    for source in sources:
        if (topic := dead_letter_topic(source, dlq_topic)) is not None:
            feeds.setdefault(topic, []).append(source)
    return feeds


def source_partitions(metadata: ClusterMetadata, sources: Sequence[str]) -> int:
    """Partitions of the largest existing source (a pattern source counts every topic it matches), 1 if none
    exists: a dead-letter topic gets as many, so keyed letters spread over partitions like their sources."""
    counts = [len(info.partitions) for name, info in metadata.topics.items()
              if any(re.match(source[1:], name) if source.startswith("^") else source == name for source in sources)]
    return max(counts, default=1)


# ---- offsets and lag -----------------------------------------------------------------------------------------


def partition_lag(positions: Mapping[PartitionKey, int], highs: Mapping[PartitionKey, int]) -> dict[PartitionKey, int]:
    """Messages between each position (or committed offset) and its partition's high watermark. A partition with
    no position (negative: never fetched, never committed) or no known high watermark is left out."""
    return {key: max(0, highs[key] - offset) for key, offset in positions.items()
            if offset >= 0 and highs.get(key, -1) >= 0}


def fetched_lag(consumer: Consumer, keys: Iterable[PartitionKey],
                asked: Mapping[PartitionKey, int] | None = None) -> dict[PartitionKey, int]:
    """`partition_lag` of a consumer's positions against the high watermarks of its last fetches: free, no broker
    round trip, but a paused partition's watermark stays where its last fetch left it, so `asked` (LatestHighs)
    gives newer ones where known."""
    positions = {(tp.topic, tp.partition): tp.offset
                 for tp in consumer.position([TopicPartition(topic, partition) for topic, partition in keys])}
    asked = asked or {}
    highs = {key: max(consumer.get_watermark_offsets(TopicPartition(*key), cached=True)[1], asked.get(key, -1))
             for key in positions}
    return partition_lag(positions, highs)


class BrokerOffsets:
    """Partitions' ends and a group's committed offsets, asked over an admin connection of its own: on the
    consumer's connection each request waits behind the pending fetch (up to fetch.wait.max.ms), which once
    made a caught-up check cost seconds and throttled the whole loop.

    Ends are asked at the consumer's isolation level (read_committed unless `isolation.level` says otherwise),
    so a partition's end is where that consumer can read to, as the consumer's own watermarks tell it."""

    def __init__(self, config: Mapping[str, Any], group_id: str, timeout: float = 5.0) -> None:
        self._admin = AdminClient(with_kafka_logging(config))
        self._group_id = group_id
        self._timeout = timeout
        self._isolation = (IsolationLevel.READ_UNCOMMITTED if config.get("isolation.level") == "read_uncommitted"
                           else IsolationLevel.READ_COMMITTED)

    def partitions(self, topic: str) -> list[int]:
        return partitions_in(self._admin.list_topics(topic, timeout=self._timeout), topic)

    def ends(self, keys: Iterable[PartitionKey], spec: OffsetSpec) -> dict[PartitionKey, int]:
        """The offset `spec` names in each partition (-1 for a timestamp with no message at or after it)."""
        request = {TopicPartition(t, p): spec for t, p in keys}
        if not request:
            return {}
        futures = self._admin.list_offsets(request, isolation_level=self._isolation, request_timeout=self._timeout)
        return {(tp.topic, tp.partition): future.result(timeout=self._timeout + ANSWER_MARGIN).offset
                for tp, future in futures.items()}

    def highs(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """High watermarks as the broker tells them now, not as of the consumer's last fetch."""
        return self.ends(keys, OffsetSpec.latest())

    def ask_highs(self, keys: Iterable[PartitionKey]) -> dict[TopicPartition, Future[Any]]:
        """`highs` without waiting: a future per partition, each answered on the admin client's own thread."""
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in keys}
        if not request:
            return {}
        return self._admin.list_offsets(request, isolation_level=self._isolation, request_timeout=self._timeout)

    def watermarks(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, tuple[int, int]]:
        """(low, high) per partition."""
        keys = list(keys)
        lows, highs = self.ends(keys, OffsetSpec.earliest()), self.highs(keys)
        return {key: (lows[key], highs[key]) for key in keys}

    def offsets_at(self, keys: Iterable[PartitionKey], epoch_ms: int) -> dict[PartitionKey, int]:
        """First offset at or after the time per partition; the partition's end if there is none."""
        found = self.ends(keys, OffsetSpec.for_timestamp(epoch_ms))
        ends = self.highs(key for key, offset in found.items() if offset < 0)
        return {key: offset if offset >= 0 else ends[key] for key, offset in found.items()}

    def committed(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """The group's committed offset per partition; negative where it never committed."""
        partitions = [TopicPartition(t, p) for t, p in keys]
        if not partitions:
            return {}
        request = ConsumerGroupTopicPartitions(self._group_id, partitions)
        answer = self._admin.list_consumer_group_offsets(
            [request], request_timeout=self._timeout)[self._group_id].result(timeout=self._timeout + ANSWER_MARGIN)
        return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}

    def lag(self, positions: Mapping[PartitionKey, int]) -> dict[PartitionKey, int]:
        """`partition_lag` against high watermarks asked now: a paused partition, which fetches nothing and so
        leaves librdkafka's cached watermark behind, still reports its true lag. Raises KafkaException when the
        broker does not answer within the timeout."""
        return partition_lag(positions, self.highs(key for key, offset in positions.items() if offset >= 0))


class LatestHighs:
    """High watermarks of partitions the consumer does not fetch (paused ones), asked in the background: each
    `ask` takes in the previous request's answers if it is done and starts the next, so the consume loop never
    waits for the broker, and a hung broker only leaves the known watermarks as they were."""

    def __init__(self, offsets: BrokerOffsets) -> None:
        self._offsets = offsets
        self._asked: dict[TopicPartition, Future[Any]] = {}
        self.known: dict[PartitionKey, int] = {}

    def ask(self, keys: Iterable[PartitionKey]) -> None:
        if any(not future.done() for future in self._asked.values()):
            return
        for tp, future in self._asked.items():
            if future.exception() is None:
                self.known[(tp.topic, tp.partition)] = future.result().offset
        self._asked = self._offsets.ask_highs(keys)


def caught_up(consumer: Consumer, keys: list[PartitionKey], offsets: BrokerOffsets) -> bool:
    """Every partition read to its high watermark. A partition this consumer has not fetched from has no
    position: it is caught up when it is empty or the group's committed offset is already at its end."""
    positions = {(tp.topic, tp.partition): tp.offset
                 for tp in consumer.position([TopicPartition(topic, partition) for topic, partition in keys])}
    highs = offsets.ends(keys, OffsetSpec.latest())
    if any(partition_lag(positions, highs).values()):
        return False
    unfetched = [key for key in keys if positions[key] < 0]
    if not unfetched:
        return True
    lows = offsets.ends(unfetched, OffsetSpec.earliest())
    committed = offsets.committed(unfetched)
    return all(highs[key] <= max(lows[key], committed.get(key, -1)) for key in unfetched)
