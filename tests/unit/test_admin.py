"""The pure parts of Kafka administration: what each error means and what to fix, why a metadata request
failed, which dead-letter topic a source writes to and with how many partitions, and lag arithmetic."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ClusterMetadata, PartitionMetadata, TopicMetadata

from pipeline.config import ConfigError, Settings, dead_letter_topic
from pipeline.kafka.admin import (
    KafkaErrors,
    KafkaUnreachable,
    TopicCreateError,
    TopicNotFound,
    Trouble,
    cluster_metadata,
    dead_letter_feeds,
    ensure_topic,
    explain,
    partition_lag,
    partitions_in,
    source_partitions,
)

REFUSED = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
                                            "Connection refused")
ALL_DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
REQUEST_FAILED = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")


@pytest.mark.parametrize(("code", "trouble", "fix"), [
    (KafkaError._TRANSPORT, Trouble.UNREACHABLE, "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"),
    (KafkaError._ALL_BROKERS_DOWN, Trouble.UNREACHABLE, "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"),
    (KafkaError._RESOLVE, Trouble.UNREACHABLE, "check the host names in KAFKA_BOOTSTRAP_SERVERS and this host's DNS"),
    (KafkaError._TIMED_OUT, Trouble.NO_ANSWER, "names a Kafka listener"),
    (KafkaError.UNKNOWN_TOPIC_OR_PART, Trouble.MISSING_TOPIC, "check KAFKA_TOPICS, or create the topic"),
    (KafkaError._UNKNOWN_TOPIC, Trouble.MISSING_TOPIC, "check KAFKA_TOPICS, or create the topic"),
    (KafkaError._AUTHENTICATION, Trouble.CREDENTIALS, "KAFKA_OPT_SASL_PASSWORD"),
    (KafkaError.SASL_AUTHENTICATION_FAILED, Trouble.CREDENTIALS, "KAFKA_OPT_SASL_PASSWORD"),
    (KafkaError._SSL, Trouble.CREDENTIALS, "KAFKA_OPT_SSL_CA_LOCATION"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, Trouble.AUTHORIZATION, "DESCRIBE and READ on the source topics"),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, Trouble.AUTHORIZATION, "DESCRIBE and READ on the consumer group"),
    (KafkaError.CLUSTER_AUTHORIZATION_FAILED, Trouble.AUTHORIZATION, "cluster permission"),
    (KafkaError.MSG_SIZE_TOO_LARGE, Trouble.OTHER, "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"),
])
def test_each_error_has_one_meaning_and_a_fix(code: int, trouble: Trouble, fix: str) -> None:
    explanation = explain(KafkaError(code, "as librdkafka says it"))
    assert explanation.trouble is trouble
    assert fix in explanation.fix


def test_the_reason_is_the_latest_specific_error_never_the_bare_all_down() -> None:
    forwarded: list[KafkaError] = []
    errors = KafkaErrors(forward=forwarded.append)
    stale = KafkaError(KafkaError._RESOLVE, "Failed to resolve 'old-host:9092'")
    for error in (stale, REFUSED, ALL_DOWN):
        errors(error)
    assert errors.reason(REQUEST_FAILED, 8.0) is REFUSED
    assert forwarded == [stale, REFUSED, ALL_DOWN], "the watch still hears every error"


def test_without_a_specific_error_the_reason_tells_a_hang_from_all_brokers_down() -> None:
    hang = KafkaErrors().reason(REQUEST_FAILED, 8.0)
    assert (hang.code(), hang.str()) == (KafkaError._TIMED_OUT, "no answer to a metadata request within 8s")
    down = KafkaErrors()
    down(ALL_DOWN)
    assert down.reason(REQUEST_FAILED, 8.0) is REQUEST_FAILED


class SilentClient:
    """A client whose metadata requests fail; polling it delivers the errors librdkafka queued meanwhile."""

    def __init__(self, errors: KafkaErrors, queued: list[KafkaError], answer: ClusterMetadata | None = None) -> None:
        self._deliver: Callable[[KafkaError], None] = errors
        self.queued, self.answer = queued, answer
        self.requests = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata:
        self.requests += 1
        if self.answer is not None:
            return self.answer
        time.sleep(min(timeout, 0.05))
        raise KafkaException(REQUEST_FAILED)

    def poll(self, _timeout: float) -> int:
        for error in self.queued:
            self._deliver(error)
        self.queued = []
        return 0


def test_fail_fast_gives_up_once_every_broker_is_down_with_the_reason_and_fix() -> None:
    errors = KafkaErrors()
    client = SilentClient(errors, [REFUSED, ALL_DOWN])
    with pytest.raises(KafkaUnreachable) as raised:
        cluster_metadata(client, errors, 30.0, fail_fast=True)  # type: ignore[arg-type]
    assert client.requests == 1, "no waiting out the timeout once librdkafka says every broker is down"
    assert raised.value.reason is REFUSED
    assert raised.value.fix == "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"
    assert str(raised.value) == f"cannot reach Kafka ({REFUSED.str()}); {raised.value.fix}"


def test_without_fail_fast_it_keeps_asking_until_the_timeout() -> None:
    errors = KafkaErrors()
    client = SilentClient(errors, [REFUSED, ALL_DOWN])
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable):
        cluster_metadata(client, errors, 0.3)  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.3 and client.requests > 1


def test_errors_from_an_earlier_question_are_not_this_ones_reason() -> None:
    errors = KafkaErrors()
    errors(REFUSED)  # served while asking before, on a long-lived client
    with pytest.raises(KafkaUnreachable) as raised:
        cluster_metadata(SilentClient(errors, []), errors, 0.1)  # type: ignore[arg-type]
    assert raised.value.reason.code() == KafkaError._TIMED_OUT
    assert "names a Kafka listener" in raised.value.fix


def metadata_of(**partitions: int) -> ClusterMetadata:
    metadata = ClusterMetadata()
    for name, count in partitions.items():
        topic = TopicMetadata()
        topic.topic, topic.partitions = name, {p: PartitionMetadata() for p in range(count)}
        metadata.topics[name] = topic
    return metadata


def test_the_metadata_answer_is_returned_as_is() -> None:
    errors = KafkaErrors()
    answer = metadata_of(events=3)
    assert cluster_metadata(SilentClient(errors, [], answer), errors, 1.0, fail_fast=True) is answer  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "dlq_topic", "expected"), [
    ("events", "", "events.dlq"),
    ("events", "all-dead-letters", "all-dead-letters"),
    ("^segment-.*", "all-dead-letters", "all-dead-letters"),
    ("^segment-.*", "", None),  # its '<topic>.dlq' names could match the pattern itself
])
def test_which_dead_letter_topic_a_source_writes_to(source: str, dlq_topic: str, expected: str | None) -> None:
    assert dead_letter_topic(source, dlq_topic) == expected


def test_settings_use_the_same_rule_and_refuse_a_pattern_without_dlq_topic() -> None:
    assert Settings().dlq_topic_for("events") == "events.dlq"
    assert Settings(dlq_topic="dead").dlq_topic_for("^segment-.*") == "dead"
    with pytest.raises(ConfigError, match=r"is a pattern.*DLQ_TOPIC"):
        Settings().dlq_topic_for("^segment-.*")


def test_sources_feed_their_dead_letter_topics() -> None:
    assert dead_letter_feeds(["a", "^b.*", "c"], "") == {"a.dlq": ["a"], "c.dlq": ["c"]}
    assert dead_letter_feeds(["a", "^b.*", "c"], "dead") == {"dead": ["a", "^b.*", "c"]}


def test_a_dead_letter_topic_gets_as_many_partitions_as_its_largest_source() -> None:
    metadata = metadata_of(a=3, b1=8, b2=2, other=12)
    assert source_partitions(metadata, ["a"]) == 3
    assert source_partitions(metadata, ["a", "^b.*"]) == 8, "a pattern counts every topic it matches"
    assert source_partitions(metadata, ["missing"]) == 1


def test_partitions_in_names_a_missing_topic() -> None:
    metadata = metadata_of(a=3, empty=0)
    assert partitions_in(metadata, "a") == [0, 1, 2]
    for absent in ("missing", "empty"):
        with pytest.raises(TopicNotFound, match=f"topic '{absent}' does not exist"):
            partitions_in(metadata, absent)


def test_an_existing_topic_is_not_created_again() -> None:
    class NoAdmin:
        def create_topics(self, *_args: object, **_kwargs: object) -> None:
            raise AssertionError("the topic exists: nothing to create")

    ensured = ensure_topic(NoAdmin(), metadata_of(a=4), "a", 1, 5.0)  # type: ignore[arg-type]
    assert (ensured.partitions, ensured.created) == (4, False)


def test_a_refused_or_unanswered_create_says_which() -> None:
    refused = TopicCreateError("dead", 3, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Topic authorization "
                                                                                            "failed"), 30.0)
    assert str(refused) == "topic 'dead' does not exist and could not be created: Topic authorization failed"
    unanswered = TopicCreateError("dead", 3, None, 30.0)
    assert str(unanswered) == "topic 'dead' does not exist and creating it timed out after 30s"


def test_lag_is_the_distance_to_the_high_watermark() -> None:
    positions = {("t", 0): 10, ("t", 1): 7, ("t", 2): 9}
    highs = {("t", 0): 15, ("t", 1): 7, ("t", 2): 8}
    assert partition_lag(positions, highs) == {("t", 0): 5, ("t", 1): 0, ("t", 2): 0}


def test_a_partition_without_a_position_or_a_high_watermark_has_no_lag() -> None:
    positions = {("t", 0): -1001, ("t", 1): 4, ("t", 2): 4}  # -1001: never fetched, never committed
    assert partition_lag(positions, {("t", 0): 10, ("t", 1): -1}) == {}
