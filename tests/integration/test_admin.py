"""Kafka administration against the real broker: a topic is ensured once whoever creates it, watermarks, committed
offsets and offsets by time come from the broker, and lag counts what a paused partition has not read, also as
the consume loop asks it (in the background)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.kafka.admin import (
    BrokerOffsets,
    KafkaErrors,
    KafkaUnreachable,
    LatestHighs,
    TopicNotFound,
    cluster_metadata,
    ensure_topic,
    fetched_lag,
)
from tests.conftest import TopicFactory, wait_for


def _produce(bootstrap: str, topic: str, partition: int, count: int, first_timestamp_ms: int = 0) -> None:
    """`count` messages to one partition, 1 s apart from `first_timestamp_ms` when given, all acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for n in range(count):
        timestamp = first_timestamp_ms + 1000 * n if first_timestamp_ms else 0
        producer.produce(topic, value=f"m-{n}".encode(), partition=partition, timestamp=timestamp)
    assert producer.flush(30) == 0


def _offsets(bootstrap: str, group: str = "unused") -> BrokerOffsets:
    return BrokerOffsets({"bootstrap.servers": bootstrap}, group, timeout=10.0)


def test_ensure_topic_creates_it_once_and_tolerates_another_creator(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: TopicFactory) -> None:
    name = f"{make_topic(partitions=1)}.dlq"  # make_topic deletes the '.dlq' twin afterwards
    stale = kafka_admin.list_topics(timeout=10)  # taken before anyone created it

    would = ensure_topic(kafka_admin, stale, name, 3, 30.0, validate_only=True)
    assert would.created and name not in kafka_admin.list_topics(timeout=10).topics, "validate_only creates nothing"

    created = ensure_topic(kafka_admin, stale, name, 3, 30.0)
    assert (created.partitions, created.created) == (3, True)
    assert len(kafka_admin.list_topics(name, timeout=10).topics[name].partitions) == 3, "usable on return"

    raced = ensure_topic(kafka_admin, stale, name, 5, 30.0)  # as a second member with the same old metadata
    assert (raced.partitions, raced.created) == (3, False), "'already exists' is the topic as it is, not an error"

    known = ensure_topic(kafka_admin, kafka_admin.list_topics(timeout=10), name, 5, 30.0)
    assert (known.partitions, known.created) == (3, False)


def test_watermarks_committed_offsets_and_offsets_by_time(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=3)
    _produce(kafka_bootstrap, topic, 0, 3, first_timestamp_ms=1_700_000_000_000)
    _produce(kafka_bootstrap, topic, 1, 5)
    group = f"admin-{uuid.uuid4().hex[:8]}"
    offsets = _offsets(kafka_bootstrap, group)
    keys = [(topic, p) for p in offsets.partitions(topic)]

    assert keys == [(topic, 0), (topic, 1), (topic, 2)]
    assert offsets.watermarks(keys) == {(topic, 0): (0, 3), (topic, 1): (0, 5), (topic, 2): (0, 0)}
    assert offsets.offsets_at([(topic, 0)], 1_700_000_001_000) == {(topic, 0): 1}
    assert offsets.offsets_at([(topic, 0)], 1_700_000_000_000 - 1) == {(topic, 0): 0}
    assert offsets.offsets_at([(topic, 0)], 1_800_000_000_000) == {(topic, 0): 3}, "none after it: the end"

    assert all(offset < 0 for offset in offsets.committed(keys).values()), "the group never committed"
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 1, 2)], asynchronous=False)
    member.close()
    committed = offsets.committed(keys)
    assert committed[(topic, 1)] == 2 and committed[(topic, 0)] < 0
    assert offsets.lag(committed) == {(topic, 1): 3}, "lag of a committed offset; never-committed ones have none"


def test_a_paused_partition_reports_the_lag_it_accumulates(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=1)
    key = (topic, 0)
    _produce(kafka_bootstrap, topic, 0, 5)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"admin-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])

        def read_to(offset: int) -> bool:
            consumer.poll(0.2)
            return consumer.position([TopicPartition(topic, 0)])[0].offset >= offset

        wait_for(lambda: read_to(5), 30, "the consumer to read the partition to its end")
        consumer.pause([TopicPartition(topic, 0)])
        _produce(kafka_bootstrap, topic, 0, 4)
        position = consumer.position([TopicPartition(topic, 0)])[0].offset
        assert position == 5, "paused: nothing more is read"
        assert _offsets(kafka_bootstrap).lag({key: position}) == {key: 4}
        # the cached watermark stays where the last fetch left it (a fetch already on its way may still move it, so
        # it is not asserted); what the loop reports is the watermark asked of the broker
        highs = LatestHighs(_offsets(kafka_bootstrap))

        def asked() -> bool:  # as the loop does each second: never waits, takes the answer on a later pass
            highs.ask([key])
            return key in highs.known

        wait_for(asked, 30, "the broker's answer")
        assert fetched_lag(consumer, [key], highs.known) == {key: 4}, "the loop's lag gauge while paused"
    finally:
        consumer.close()


def test_a_missing_topic_and_an_unreachable_broker_say_so(kafka_bootstrap: str) -> None:
    with pytest.raises(TopicNotFound, match="does not exist"):
        _offsets(kafka_bootstrap).partitions(f"missing-{uuid.uuid4().hex[:12]}")

    errors = KafkaErrors()
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:1", "log_level": 0, "error_cb": errors})
    started = time.monotonic()
    with pytest.raises(KafkaUnreachable) as raised:
        cluster_metadata(admin, errors, 8.0, fail_fast=True)
    assert time.monotonic() - started < 8.0, "every broker down: no waiting out the timeout"
    assert raised.value.reason.code() == KafkaError._TRANSPORT and "Connection refused" in raised.value.reason.str()
    assert raised.value.fix == "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up"
