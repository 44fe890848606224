"""Confluent-framed Avro against a real schema registry: events written by confluent-kafka's AvroSerializer go
through the real pipeline, on the real broker, to the Wigzo sandbox.

The registry is Apicurio Registry 2.4 (pipeline/dev/local_registry.py), which answers Confluent's API under
/apis/ccompat/v7. Where it differs from Confluent's Schema Registry, as far as these tests and the decoder go:

- Default compatibility is NONE; Confluent's is BACKWARD. The schema-change test sets BACKWARD on its subject, as
  a Confluent registry would have it, so v2 passes a real check.
- An incompatible schema is refused with HTTP 409 and error_code 0; Confluent's error_code is 409.
- An unknown schema id is HTTP 404 with error_code 40403, as in Confluent, but another message text. So is a
  path the registry does not serve (HTTP 404, error_code 404): a SCHEMA_REGISTRY_URL without /apis/ccompat/v7
  makes every id "not registered".
- confluent-kafka's serializer first asks for /associations, which Apicurio does not serve (404, error_code 0);
  the client then carries on as with an older Confluent registry.
- Its storage is in memory: a restarted registry has forgotten every schema, where Confluent's keeps them in
  Kafka. The outage test's registry keeps them in files instead (the `stoppable_registry` fixture).
- Ids are Apicurio content ids: like Confluent's, the same schema text gets the same id under every subject.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.config import Settings
from pipeline.contract.decoder import SCHEMAS_DIR, EventDecoder
from pipeline.dev.local_registry import LocalRegistry
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.kafka.dead_letter_headers import error_headers
from pipeline.kafka.pipeline import Pipeline
from pipeline.model import Deliver, Outcome, Secret
from pipeline.wigzo.chain import Chain
from tests.conftest import TopicFactory, wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import (
    live_pipeline,
    predicted_requests,
    produce,
    read_all,
    received_requests,
    run_until,
    settings_for,
)

CURRENT_SCHEMAS = {call: f"segment.spec.{call.capitalize()}.avsc"
                   for call in ("identify", "track", "page", "screen", "group", "alias")}
TRACK_V1, TRACK_V2 = "segment.spec.Track.v1.avsc", "segment.spec.Track.avsc"  # v2 adds the optional `channel`
TRACK_SUBJECT = "segment.spec.Track"  # RecordNameStrategy: one subject per record, whatever the topic
UNKNOWN_ID = 2**31 - 1  # an id this registry never hands out


class AvroProducerSide:
    """What a producer using confluent-kafka's AvroSerializer does: one serializer per schema file, each registering
    its schema under its record's subject (RecordNameStrategy, so one topic carries every call type)."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.client = SchemaRegistryClient({"url": registry.url})
        self._serializers: dict[str, AvroSerializer] = {}

    def encode(self, topic: str, event: dict[str, Any], schema_file: str | None = None) -> bytes:
        file = schema_file or CURRENT_SCHEMAS[event["type"]]
        if file not in self._serializers:
            self._serializers[file] = _serializer(self.client, file)
        value = self._serializers[file](event, SerializationContext(topic, MessageField.VALUE))
        assert value is not None
        return value


def _serializer(client: SchemaRegistryClient, file: str) -> AvroSerializer:
    schema_text = (SCHEMAS_DIR / file).read_text()
    # The contract carries free-form objects (properties, traits, context...) as their JSON text.
    json_fields = [f["name"] for f in json.loads(schema_text)["fields"] if f.get("json") == "object"]

    def to_dict(event: dict[str, Any], _: SerializationContext) -> dict[str, Any]:
        return {**event, **{name: orjson.dumps(event[name]).decode() for name in json_fields if name in event}}

    return AvroSerializer(client, schema_text, to_dict=to_dict,
                          conf={"subject.name.strategy": record_subject_name_strategy})


def pipeline_settings(bootstrap: str, topic: str, sandbox: Sandbox, registry: LocalRegistry) -> Settings:
    """Settings for a pipeline that delivers to the sandbox and resolves schema ids at `registry`."""
    return settings_for(bootstrap, topic, sandbox.url, wigzo_org_token=Secret(SANDBOX_ORG_TOKEN),
                        schema_registry_url=registry.url)


def without_registry(settings: Settings) -> Settings:
    return dataclasses.replace(settings, schema_registry_url="")


def deliverable_events(settings: Settings, count: int, seed: int) -> list[tuple[bytes | None, dict[str, Any]]]:
    """(key, event) of the seeded sample stream's events that Wigzo receives, so each must end delivered."""
    # the samples' Avro is framed with the ids of schemas/registry.json, not with the registry's
    decoder, chain = EventDecoder(without_registry(settings)), Chain.from_settings(settings)
    events = []
    for sample in SampleStream(seed=seed).messages(count):
        event = decoder.decode("samples", sample.value)
        if isinstance(event, dict) and isinstance(chain.decide(event), Deliver):
            events.append((sample.key, event))
    return events


def expected_requests(settings: Settings, topic: str, events: Iterable[dict[str, Any]]) -> Counter[Any]:
    """What Wigzo must receive for these events as their writer schemas carry them: the same events as JSON
    through the harness's prediction, so the expectation never rests on the registry path under test."""
    as_json = [SampleMessage(None, orjson.dumps(event), "json") for event in events]
    return predicted_requests(without_registry(settings), topic, as_json)


def framed_id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


def schema_ids(messages: Iterable[SampleMessage]) -> set[int]:
    return {framed_id(m.value) for m in messages if m.value}


def run_to_the_end(pipeline: Pipeline, settings: Settings, produced: int, timeout: float = 120.0) -> None:
    run_until(pipeline, settings, lambda: pipeline.status.stats.read >= produced
              and pipeline.status.outstanding() == 0, timeout=timeout)


def assert_all_delivered(pipeline: Pipeline, settings: Settings, topic: str, events: list[dict[str, Any]],
                         sandbox: Sandbox) -> None:
    """One outcome per message, every one delivered, and Wigzo received exactly what the events map to."""
    totals = pipeline.status.outcomes.totals()
    assert totals[Outcome.DELIVERED] == len(events) == sum(totals.values()), totals
    expected = expected_requests(settings, topic, events)
    received = received_requests(sandbox.control.received())
    missing = expected - received
    assert not missing, f"{sum(missing.values())} requests never reached Wigzo"
    assert received == expected


def test_events_written_by_the_avro_serializer_are_all_delivered(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, schema_registry: LocalRegistry) -> None:
    topic = make_topic(partitions=3)
    settings = pipeline_settings(kafka_bootstrap, topic, sandbox, schema_registry)
    producer = AvroProducerSide(schema_registry)
    events = deliverable_events(settings, 400, seed=21)
    messages = [SampleMessage(key, producer.encode(topic, event), event["type"]) for key, event in events]
    assert {"identify", "track", "page"} <= {m.kind for m in messages}
    produce(kafka_bootstrap, topic, messages)

    registered = {producer.client.get_latest_version(f"segment.spec.{call.capitalize()}").schema_id
                  for call in {m.kind for m in messages}}
    assert schema_ids(messages) == registered, "framed with the ids the registry handed out"
    pipeline = live_pipeline(settings)
    run_to_the_end(pipeline, settings, len(messages))
    assert_all_delivered(pipeline, settings, topic, [event for _, event in events], sandbox)


def test_a_compatible_schema_change_mid_stream_decodes_both_versions(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, schema_registry: LocalRegistry) -> None:
    topic = make_topic(partitions=3)
    settings = pipeline_settings(kafka_bootstrap, topic, sandbox, schema_registry)
    producer = AvroProducerSide(schema_registry)
    producer.client.set_compatibility(TRACK_SUBJECT, "BACKWARD")  # Confluent's default; Apicurio's is NONE
    # A channel Wigzo tells apart: "mobile" makes `source` app, where the analytics.js library alone makes it web.
    # v1 has no channel, so its events must arrive as web and v2's as app: each decoded as its writer wrote it.
    tracks = [(key, {**event, "channel": "mobile"})
              for key, event in deliverable_events(settings, 600, seed=22) if event["type"] == "track"]
    half = len(tracks) // 2
    messages = [SampleMessage(key, producer.encode(topic, event, TRACK_V1 if n < half else TRACK_V2), "track")
                for n, (key, event) in enumerate(tracks)]
    as_written = [{k: v for k, v in event.items() if k != "channel"} if n < half else event
                  for n, (_, event) in enumerate(tracks)]
    produce(kafka_bootstrap, topic, messages)

    ids = [framed_id(m.value) for m in messages if m.value]
    v1_id, v2_id = ids[0], ids[-1]
    assert v1_id != v2_id and Counter(ids) == {v1_id: half, v2_id: len(tracks) - half}
    assert producer.client.get_versions(TRACK_SUBJECT) == [1, 2], "v2 passed the BACKWARD check as a new version"
    incompatible = json.loads((SCHEMAS_DIR / TRACK_V2).read_text())
    incompatible["fields"].append({"name": "store", "type": "string"})  # required: old events cannot be read
    with pytest.raises(SchemaRegistryError) as refused:  # so the check v2 passed is a real one
        producer.client.register_schema(TRACK_SUBJECT, Schema(json.dumps(incompatible), "AVRO"))
    assert refused.value.http_status_code == 409  # Apicurio's error_code is 0 here, Confluent's 409

    pipeline = live_pipeline(settings)
    run_to_the_end(pipeline, settings, len(messages))
    assert_all_delivered(pipeline, settings, topic, as_written, sandbox)
    sources = Counter(request["body"].get("source") for request in sandbox.control.received())
    assert sources["web"] and sources["app"], sources


def test_an_id_the_registry_does_not_know_is_dead_lettered_with_the_reason(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, schema_registry: LocalRegistry) -> None:
    topic = make_topic(partitions=1)
    settings = pipeline_settings(kafka_bootstrap, topic, sandbox, schema_registry)
    producer = AvroProducerSide(schema_registry)
    (key, event), *_ = deliverable_events(settings, 20, seed=23)
    good = producer.encode(topic, event)
    unknown = b"\x00" + UNKNOWN_ID.to_bytes(4, "big") + good[5:]  # a valid body under an id never handed out
    produce(kafka_bootstrap, topic, [SampleMessage(key, unknown, "unknown id"), SampleMessage(key, good, "good")])

    pipeline = live_pipeline(settings)
    run_to_the_end(pipeline, settings, 2)
    assert pipeline.status.outcomes.totals() == {Outcome.DELIVERED: 1, Outcome.SKIPPED: 0, Outcome.DEAD_LETTERED: 1}
    # Apicurio answers an unknown id as Confluent does (HTTP 404, error_code 40403): dead-lettered, not waited out
    [letter] = read_all(kafka_bootstrap, settings.dlq_topic_for(topic))
    assert letter.value() == unknown, "the original bytes travel unchanged"
    context = error_headers(letter.headers())
    assert (context["stage"], context["class"]) == ("decode", "UnknownSchemaId")
    assert context["message"] == ("schema id is not registered in the schema registry; expected a registered "
                                  f"schema id; found {UNKNOWN_ID}")


class RegistryLookups:
    """Counts the schema lookups that failed because the registry did not answer, by wrapping the client the
    decoder uses (behaviour unchanged): the sign that the pipeline has met the outage."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failed = 0
        real = SchemaRegistryClient.get_schema

        def get_schema(client: SchemaRegistryClient, *args: Any, **kwargs: Any) -> Any:
            try:
                return real(client, *args, **kwargs)
            except SchemaRegistryError:
                raise
            except Exception:  # the transport's error while nothing listens: refused, reset, timed out
                self.failed += 1
                raise

        monkeypatch.setattr(SchemaRegistryClient, "get_schema", get_schema)


def run_in_background(work: Callable[[], None]) -> Callable[[float], None]:
    """Start `work` on a thread; the returned join(timeout) re-raises what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test's thread, which fails with it
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout: float) -> None:
        thread.join(timeout)
        assert not thread.is_alive(), f"still running after {timeout:.0f}s"
        if errors:
            raise errors[0]

    return join


def test_the_registry_down_and_back_every_event_ends_delivered(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, stoppable_registry: LocalRegistry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topic = make_topic(partitions=3)
    settings = pipeline_settings(kafka_bootstrap, topic, sandbox, stoppable_registry)
    producer = AvroProducerSide(stoppable_registry)
    events = deliverable_events(settings, 300, seed=24)
    messages = [SampleMessage(key, producer.encode(topic, event), event["type"]) for key, event in events]
    produce(kafka_bootstrap, topic, messages)

    stoppable_registry.stop()  # the events are in Kafka; the pipeline has resolved none of their ids yet
    lookups = RegistryLookups(monkeypatch)
    pipeline = live_pipeline(settings)
    join = run_in_background(lambda: run_to_the_end(pipeline, settings, len(messages), timeout=240))
    wait_for(lambda: lookups.failed > 0, 90, "the pipeline to meet the registry outage")
    stoppable_registry.start()
    # It came back with its schemas (kept in files, as Confluent keeps them in Kafka), so the ids in Kafka resolve;
    # an in-memory Apicurio would answer 404 for them, and the events would be dead-lettered as UnknownSchemaId.
    fresh = SchemaRegistryClient({"url": stoppable_registry.url})  # the producer's client has them cached
    for schema_id in schema_ids(messages):
        fresh.get_schema(schema_id)
    join(260)

    assert read_all(kafka_bootstrap, settings.dlq_topic_for(topic)) == [], "an outage is never the events' fault"
    assert_all_delivered(pipeline, settings, topic, [event for _, event in events], sandbox)


def test_while_the_registry_is_down_json_events_flow_and_only_the_avro_ones_wait(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, stoppable_registry: LocalRegistry,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Avro and JSON events interleaved on one topic, the registry down: the JSON events are all delivered
    meanwhile, the member says why it is not ready, nothing is dead-lettered; back up, the rest follows. (Per-user
    order holds within a format: a JSON event may overtake its user's earlier Avro event waiting for its schema.)"""
    topic = make_topic(partitions=3)
    settings = pipeline_settings(kafka_bootstrap, topic, sandbox, stoppable_registry)
    producer = AvroProducerSide(stoppable_registry)
    events = deliverable_events(settings, 600, seed=25)
    events = events[:len(events) // 2 * 2]
    avro, as_json = events[::2], events[1::2]
    messages = [message for pair in zip(
        [SampleMessage(key, producer.encode(topic, event), event["type"]) for key, event in avro],
        [SampleMessage(key, orjson.dumps(event), event["type"]) for key, event in as_json]) for message in pair]
    produce(kafka_bootstrap, topic, messages)

    stoppable_registry.stop()
    lookups = RegistryLookups(monkeypatch)
    pipeline = live_pipeline(settings)
    started = time.monotonic()
    join = run_in_background(lambda: run_to_the_end(pipeline, settings, len(messages), timeout=240))
    address = stoppable_registry.url.split("/apis")[0]
    wait_for(lambda: any(reason.startswith(f"schema registry at {address}")
                         for reason in pipeline.status.readiness()), 60, "readiness to name the registry")
    reported = time.monotonic() - started
    json_expected = expected_requests(settings, topic, [event for _, event in as_json])
    wait_for(lambda: not json_expected - received_requests(sandbox.control.received()), 90,
             "every JSON event delivered while the registry is down")
    wait_for(lambda: lookups.failed > 0 and pipeline.status.stats.read == len(messages), 30,
             "everything read, and the registry asked and not answering")
    json_delivered = time.monotonic() - started
    assert any(reason.startswith(f"schema registry at {address}: no answer for ")
               and reason.endswith(f"{len(avro)} messages wait for it") for reason in pipeline.status.readiness())
    assert pipeline.status.outcomes.totals()[Outcome.DEAD_LETTERED] == 0

    stoppable_registry.start()  # its schemas kept in files: the ids in Kafka resolve again
    back = time.monotonic()
    join(260)
    print(f"registry outage: {len(as_json)} JSON events delivered {json_delivered:.1f} s after the start, with "
          f"{len(avro)} Avro events waiting; readiness named the registry {reported:.1f} s after the start; "
          f"the registry back, everything finished {time.monotonic() - back:.1f} s later")
    assert read_all(kafka_bootstrap, settings.dlq_topic_for(topic)) == [], "an outage is never the events' fault"
    assert_all_delivered(pipeline, settings, topic, [event for _, event in events], sandbox)
