"""Helpers for end-to-end tests: produce samples, predict what Wigzo must receive, read topics back."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from pipeline.config import Settings
from pipeline.contract.decoder import EventDecoder
from pipeline.dev.samples import SampleMessage
from pipeline.kafka.assignment import GroupSubscription
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.runner import build_pipeline, run_pipeline
from pipeline.model import Deliver, Secret
from pipeline.wigzo.chain import Chain

ORG_TOKEN = "test-org-token"


def settings_for(bootstrap: str, topic: str, sandbox_url: str, **overrides: Any) -> Settings:
    base = Settings(bootstrap_servers=bootstrap, topics=(topic,), group_id=f"group-{uuid.uuid4().hex[:10]}",
                    wigzo_base_url=sandbox_url, wigzo_org_token=Secret(ORG_TOKEN), max_in_flight=64,
                    connect_timeout=2.0, read_timeout=5.0)
    return dataclasses.replace(base, **overrides)


def produce(bootstrap: str, topic: str, samples: Iterable[SampleMessage], timestamp_ms: int | None = None) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    count = 0
    for sample in samples:
        producer.produce(topic, key=sample.key, value=sample.value, timestamp=timestamp_ms or 0)
        count += 1
        if count % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return count


def predicted_requests(settings: Settings, topic: str, samples: Iterable[SampleMessage]) -> Counter[tuple[str, str, bytes]]:
    """What Wigzo must receive, from the same decoder and chain (consent, filters, mapping) the consumer runs."""
    decoder, chain = EventDecoder(settings), Chain.from_settings(settings)
    expected: Counter[tuple[str, str, bytes]] = Counter()
    for sample in samples:
        event = decoder.decode_resolving(topic, sample.value)
        if isinstance(event, dict):
            decision = chain.decide(event)
            if isinstance(decision, Deliver):
                for request in decision.requests:
                    key = dict(request.headers)["Idempotency-Key"]
                    expected[(request.path, key, orjson.dumps(request.body, option=orjson.OPT_SORT_KEYS))] += 1
    return expected


def received_requests(received: list[dict[str, Any]]) -> Counter[tuple[str, str, bytes]]:
    return Counter((r["path"], r["idempotency_key"], orjson.dumps(r["body"], option=orjson.OPT_SORT_KEYS))
                   for r in received)


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every message of a topic, from the start to its end as of now."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        consumer.close()
        return []
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
    messages: list[Message] = []
    positions = {p: 0 for p in ends}
    deadline = time.monotonic() + timeout
    while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is None:
                messages.append(message)
                positions[message.partition()] = message.offset() + 1
    consumer.close()
    return messages


def live_pipeline(settings: Settings) -> Pipeline:
    """A member of the settings' consumer group, built as `wigzo-pipeline run` builds it."""
    return build_pipeline(settings, GroupSubscription(settings.topics, settings.dlq_topic))


def run_until(pipeline: Pipeline, settings: Settings, done: Callable[[], bool], timeout: float = 300.0) -> None:
    """Run a pipeline in this thread until `done` (or the timeout, which fails the test)."""
    deadline = time.monotonic() + timeout
    timed_out = threading.Event()

    def stop_when() -> bool:
        if time.monotonic() > deadline:
            timed_out.set()
            return True
        return done()

    run_pipeline(pipeline, settings, stop_when=stop_when)
    assert not timed_out.is_set(), f"pipeline did not finish in {timeout}s: read {pipeline.status.stats.read}, " \
                                   f"outcomes {pipeline.status.outcomes.totals()}"


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset per partition (negative where nothing is committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                       timeout=10)]
    finally:
        consumer.close()


def everything_committed(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        ends = [probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        probe.close()
    return committed_offsets(bootstrap, group, topic, partitions) == ends


def free_port() -> int:
    """A loopback port nothing listens on right now (for a subprocess's METRICS_PORT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
