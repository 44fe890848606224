"""The broker is real: messages cross it and a consumer group really rebalances."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import TopicFactory


def _produce(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(count):
        producer.produce(topic, key=f"user-{i}".encode(), value=f"event-{i}".encode(), partition=i % partitions)
    assert producer.flush(30) == 0


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": 10000})


def test_messages_cross_the_broker(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    topic = make_topic(partitions=6)
    _produce(kafka_bootstrap, topic, 300, partitions=6)
    consumer = _consumer(kafka_bootstrap, f"smoke-{uuid.uuid4().hex}")
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 300 and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=1.0):
            assert message.error() is None
            seen.add(message.value())
    consumer.close()
    assert seen == {f"event-{i}".encode() for i in range(300)}


def test_consumer_group_rebalances_across_two_members(kafka_bootstrap: str, make_topic: TopicFactory) -> None:
    """A mock broker cannot do this: the group coordinator must split 6 partitions between two members
    and give them all back to the survivor when one leaves."""
    topic = make_topic(partitions=6)
    _produce(kafka_bootstrap, topic, 60, partitions=6)
    group = f"rebalance-{uuid.uuid4().hex}"
    first, second = _consumer(kafka_bootstrap, group), _consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    second.subscribe([topic])

    def assigned(consumer: Consumer) -> set[int]:
        return {tp.partition for tp in consumer.assignment()}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        first.poll(0.2)
        second.poll(0.2)
        a, b = assigned(first), assigned(second)
        if a and b and a | b == set(range(6)) and not a & b:
            break
    else:
        raise AssertionError(f"group never split the partitions: {assigned(first)} / {assigned(second)}")

    second.close()
    deadline = time.monotonic() + 60
    while assigned(first) != set(range(6)) and time.monotonic() < deadline:
        first.poll(0.2)
    assert assigned(first) == set(range(6))
    committed = first.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
    assert all(tp.error is None for tp in committed)
    first.close()
