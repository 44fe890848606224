"""Dead letters of every size against the real broker: a letter near the broker's limit is stored whole, one
too large for its topic is stored cut down with its coordinates, other write failures still halt the run, and
a dead-letter topic that cannot be used stops `run` at start-up."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY

from pipeline.config import Settings
from pipeline.kafka.dead_letter_headers import error_headers, original_headers
from pipeline.kafka.dead_letters import DeadLetterWriteError
from pipeline.kafka.pipeline import Pipeline
from pipeline.model import Outcome, Secret
from tests.conftest import TopicFactory
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import committed_offsets, live_pipeline, read_all, run_until, settings_for

ROOT = Path(__file__).resolve().parents[2]
BROKER_LIMIT = 1_048_588  # the broker's (and so a default topic's) message.max.bytes


def _identify(n: int) -> bytes:
    return orjson.dumps({"type": "identify", "userId": f"u-{n}", "messageId": f"m-{n}-{uuid.uuid4().hex[:8]}",
                         "traits": {"email": f"u{n}@example.com"}})


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Keyed messages, with a producer allowed to send what the broker accepts (the default stops at 1,000,000)."""
    failures: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": BROKER_LIMIT})
    for n, value in enumerate(values):
        producer.produce(topic, key=b"user-%d" % n, value=value, headers=[("trace", b"t-%d" % n)],
                         on_delivery=lambda error, _message: failures.append(error) if error else None)
    assert producer.flush(60) == 0 and not failures, failures


def _settings(bootstrap: str, topic: str, sandbox: Sandbox, **overrides: object) -> Settings:
    return settings_for(bootstrap, topic, sandbox.url, wigzo_org_token=Secret(SANDBOX_ORG_TOKEN), **overrides)


def _run_to_the_end(settings: Settings, count: int) -> Pipeline:
    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: pipeline.status.stats.read >= count and pipeline.status.outstanding() == 0,
              timeout=120)
    return pipeline


def _counted(metric: str, stage: str) -> float:
    return REGISTRY.get_sample_value(f"wigzo_pipeline_{metric}_total",
                                     {"stage": stage, "destination": "default"}) or 0.0


def test_a_message_near_the_broker_limit_is_dead_lettered_whole_and_the_run_goes_on(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=1)
    filler = 1_040_000 - len(orjson.dumps({"type": "track", "userId": "u-big", "properties": {"blob": ""}}))
    big = orjson.dumps({"type": "track", "userId": "u-big", "properties": {"blob": "Segment! " * (filler // 9)}})
    assert 1_039_990 < len(big) <= 1_040_000
    values = [_identify(0), _identify(1), big, _identify(3), _identify(4)]
    _produce(kafka_bootstrap, topic, values)
    settings = _settings(kafka_bootstrap, topic, sandbox)
    writes_before = _counted("dlq_writes", "decode")

    pipeline = _run_to_the_end(settings, len(values))

    assert pipeline.status.outcomes.totals()[Outcome.DELIVERED] == 4
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic, 1) == [len(values)], "everything committed"
    [letter] = read_all(kafka_bootstrap, f"{topic}.dlq")
    assert letter.value() == big, "stored whole"
    assert letter.key() == b"user-2" and original_headers(letter.headers()) == [("trace", b"t-2")]
    context = error_headers(letter.headers())
    assert (context["topic"], context["partition"], context["offset"]) == (topic, "0", "2")
    assert context["stage"] == "decode" and context["class"] == "EventTooLarge"
    assert "truncated" not in context
    assert _counted("dlq_writes", "decode") - writes_before == 1


def test_a_letter_too_large_for_its_topic_is_stored_truncated_with_its_coordinates(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: TopicFactory, sandbox: Sandbox,
        caplog: pytest.LogCaptureFixture) -> None:
    topic = make_topic(partitions=1)
    dlq = f"{topic}.dlq"  # make_topic deletes it afterwards
    kafka_admin.create_topics([NewTopic(dlq, num_partitions=1, config={"max.message.bytes": "50000"})])[dlq] \
        .result(timeout=30)
    noise = os.urandom(200_000)  # incompressible, and not UTF-8 either: rejected at decode
    prose = b'{"blob": "' + b"Segment! " * 22_000 + b'"}'  # as large, but compresses far below the limit
    values = [_identify(0), noise, _identify(2), b"not an event", _identify(4), prose]
    _produce(kafka_bootstrap, topic, values)
    settings = _settings(kafka_bootstrap, topic, sandbox)
    truncated_before, writes_before = _counted("dlq_truncated", "decode"), _counted("dlq_writes", "decode")

    with caplog.at_level(logging.ERROR, logger="pipeline.kafka.dead_letters"):
        pipeline = _run_to_the_end(settings, len(values))

    assert pipeline.status.outcomes.totals()[Outcome.DELIVERED] == 3
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic, 1) == [len(values)], "everything committed"
    letters = {error_headers(letter.headers())["offset"]: letter for letter in read_all(kafka_bootstrap, dlq)}
    assert sorted(letters) == ["1", "3", "5"]
    cut, whole = letters["1"], letters["3"]  # the cut one is written again, so it may land after the other
    context = error_headers(cut.headers())
    assert (context["topic"], context["partition"], context["offset"]) == (topic, "0", "1")
    assert context["stage"] == "decode" and context["truncated"] == "200000"
    value = cut.value() or b""
    assert 40_000 < len(value) < 50_000 and value == noise[:len(value)], "a prefix of the original, as large as fits"
    assert cut.key() == b"user-1" and original_headers(cut.headers()) == [("trace", b"t-1")]
    assert whole.value() == b"not an event" and "truncated" not in error_headers(whole.headers()), \
        "letters after a truncated one are stored whole"
    assert letters["5"].value() == prose and "truncated" not in error_headers(letters["5"].headers()), \
        "compressed, a letter four times the topic's limit fits whole"
    assert _counted("dlq_truncated", "decode") - truncated_before == 1
    assert _counted("dlq_writes", "decode") - writes_before == 3
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "pipeline.kafka.dead_letters"]
    assert (getattr(logged, "topic"), getattr(logged, "partition"), getattr(logged, "offset")) == (topic, 0, 1)
    assert f"{topic}[0]@1" in logged.getMessage()


def test_a_dead_letter_the_topic_refuses_for_any_other_reason_halts_without_committing(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=1)
    dlq = f"{topic}.dlq"
    _produce(kafka_bootstrap, topic, [b"not an event %d" % n for n in range(5)])
    settings = dataclasses.replace(_settings(kafka_bootstrap, topic, sandbox), kafka_config={
        "message.timeout.ms": "3000", "allow.auto.create.topics": "false"})
    pipeline = live_pipeline(settings)  # creates the dead-letter topic...
    kafka_admin.delete_topics([dlq], operation_timeout=30)[dlq].result(timeout=30)  # ...which is gone by the first letter

    with pytest.raises(DeadLetterWriteError, match=f"{topic}\\[0\\]@0 to dead-letter topic '{dlq}'"):
        run_until(pipeline, settings, lambda: False, timeout=60)
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic, 1)[0] < 0, \
        "nothing may be committed once the dead-letter topic fails"


def test_building_a_pipeline_creates_its_dead_letter_topic_like_its_source(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=3)
    live_pipeline(_settings(kafka_bootstrap, topic, sandbox))
    dlq = kafka_admin.list_topics(timeout=10).topics.get(f"{topic}.dlq")
    assert dlq is not None and len(dlq.partitions) == 3, "created before any dead letter, with the source's partitions"


def test_run_with_an_illegal_dead_letter_topic_name_exits_2_at_start(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=1)
    _produce(kafka_bootstrap, topic, [b"not an event"])
    group = f"group-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
           "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN, "METRICS_PORT": "0",
           "DLQ_TOPIC": "bad topic name!"}

    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--exit-when-idle", "5"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 2, done.stderr
    assert "'bad topic name!' is not a valid Kafka topic name" in done.stderr
    assert "only ASCII letters, digits, '.', '_' and '-'" in done.stderr and "DLQ_TOPIC" in done.stderr
    assert "Traceback" not in done.stderr
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == [-1001], "nothing read, nothing committed"
