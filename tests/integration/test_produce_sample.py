"""`wigzo-pipeline produce-sample` against the real broker: the topic holds exactly the seeded stream, a missing
topic is created, and an unreachable broker is a bounded, named error rather than a hang."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.cli import main
from pipeline.dev import produce_sample
from pipeline.dev.samples import SampleStream
from tests.conftest import TopicFactory
from tests.integration.pipeline_harness import read_all


def test_the_topic_holds_exactly_the_seeded_stream(kafka_bootstrap: str, make_topic: TopicFactory,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(partitions=6)
    code = main(["produce-sample", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                 "--events", "500", "--seed", "11"])
    assert code == 0
    expected = list(SampleStream(seed=11).messages(500))
    messages = read_all(kafka_bootstrap, topic)
    assert len(messages) == 500
    assert Counter((m.key(), m.value()) for m in messages) == Counter((s.key, s.value) for s in expected)
    # one key, one partition, in the stream's order: what per-user ordering downstream relies on
    by_key: defaultdict[bytes, list[bytes | None]] = defaultdict(list)
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        if message.key() is not None:
            by_key[message.key()].append(message.value())
    assert by_key == {key: [s.value for s in expected if s.key == key] for key in by_key}
    out = capsys.readouterr().out
    assert f"Produced 500 sample messages (seed 11) to {topic} (6 partitions, existing)" in out
    for kind, count in Counter(s.kind for s in expected).items():
        assert f"{count:>8}  {kind}\n" in out


def test_a_missing_topic_is_created_with_the_requested_partitions(
        kafka_bootstrap: str, kafka_admin: AdminClient, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"test-produce-sample-{uuid.uuid4().hex[:12]}"
    try:
        assert main(["produce-sample", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--events", "20", "--create-partitions", "3"]) == 0
        assert len(kafka_admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3
        assert len(read_all(kafka_bootstrap, topic)) == 20
        assert f"to {topic} (3 partitions, created)" in capsys.readouterr().out
    finally:
        if topic in kafka_admin.list_topics(timeout=10).topics:
            kafka_admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)


def test_the_default_topic_is_the_first_of_kafka_topics(kafka_bootstrap: str, make_topic: TopicFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    topic = make_topic(partitions=2)
    monkeypatch.setenv("KAFKA_TOPICS", f"{topic},other-topic")
    assert main(["produce-sample", "--bootstrap-servers", kafka_bootstrap, "--events", "15"]) == 0
    assert len(read_all(kafka_bootstrap, topic)) == 15


def test_a_regex_topic_list_asks_for_a_topic(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KAFKA_TOPICS", "^segment-.*")
    assert main(["produce-sample", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "pass --topic NAME" in capsys.readouterr().err


def test_an_unreachable_broker_is_a_bounded_error_naming_the_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(produce_sample, "TIMEOUT_SECONDS", 2.0)
    assert main(["produce-sample", "--bootstrap-servers", "127.0.0.1:1", "--topic", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "Kafka at 127.0.0.1:1 did not answer within 2s" in err and "KAFKA_BOOTSTRAP_SERVERS" in err
    assert "Connection refused" in err, "librdkafka's reason, not only that it failed"
