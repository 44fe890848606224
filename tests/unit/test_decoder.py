"""Decoding: every kind of bad input ends in a Rejection, schemas evolve, ids resolve locally or via a registry."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from pipeline.config import ConfigError, Settings
from pipeline.contract.decoder import (
    FOUND_LIMIT,
    MAX_JSON_DEPTH,
    SCHEMAS_DIR,
    EventDecoder,
    SchemaNeeded,
    _contract,
    encode_event,
)
from pipeline.contract.registry import SchemaRegistryUnavailable
from pipeline.model import Rejection

TRACK: dict[str, Any] = {
    "type": "track",
    "messageId": "msg-1",
    "userId": "user-1",
    "event": "Order Completed",
    "properties": {"total": 30.5, "products": [{"sku": "A-1", "price": 10}, {"sku": "B-2", "price": 20.5}]},
    "timestamp": "2024-05-01T12:00:00.000Z",
    "context": {"ip": "203.0.113.9"},
    "channel": "browser",
}
FORMATS = {"*": "auto", "confluent": "avro-confluent", "json": "json", "plain": "avro"}
EVENT_AVSC = str(SCHEMAS_DIR / "event.avsc")


def _decoder(**overrides: Any) -> EventDecoder:
    return EventDecoder(Settings(**{"input_formats": FORMATS, "avro_writer_schema": EVENT_AVSC, **overrides}))


def _json(**changes: Any) -> bytes:
    event = {**TRACK, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not DROP})


def _confluent_raw(schema_id: int = 3, **changes: Any) -> bytes:
    """Bytes a producer with its own serializer could send: bypasses encode_event's checks."""
    datum = {**TRACK, "properties": orjson.dumps(TRACK["properties"]).decode(),
             "context": orjson.dumps(TRACK["context"]).decode(), **changes}
    stream = io.BytesIO(b"\x00" + schema_id.to_bytes(4, "big"))
    stream.seek(5)
    fastavro.schemaless_writer(stream, _contract().local_ids[schema_id], datum)
    return stream.getvalue()


DROP = object()
# 65 nested objects: one more than allowed once it sits one level inside a free-form field.
DEEP: dict[str, Any] = {"a": None}
for _ in range(MAX_JSON_DEPTH):
    DEEP = {"a": DEEP}
VALID_CONFLUENT = encode_event(TRACK, "avro-confluent")

# (case, topic, value, stage, error_class, field)
BAD_INPUT = [
    ("tombstone", "json", None, "decode", "TombstoneMessage", ""),
    ("empty value", "*", b"", "decode", "EmptyMessage", ""),
    ("over the size limit", "json", _json(properties={"pad": "x" * 33_000}), "decode", "EventTooLarge", ""),
    ("random bytes, no plain Avro", "strict", b"\x93\x11\xfe\x02garbage", "decode", "UnrecognizedFormat", ""),
    ("random bytes as plain Avro", "plain", b"\x93\x11\xfe\x02garbage", "decode", "InvalidAvro", ""),
    ("truncated Avro", "*", VALID_CONFLUENT[:-7], "decode", "InvalidAvro", ""),
    ("trailing bytes after Avro", "*", VALID_CONFLUENT + b"\x00\x01", "decode", "TrailingBytes", ""),
    ("unknown schema id", "*", b"\x00\x00\x00\x30\x39" + VALID_CONFLUENT[5:], "decode", "UnknownSchemaId", ""),
    ("wrong magic byte", "confluent", b"\x01" + VALID_CONFLUENT[1:], "decode", "WrongMagicByte", ""),
    ("JSON on a Confluent topic", "confluent", _json(), "decode", "WrongMagicByte", ""),
    ("header cut short", "confluent", b"\x00\x00\x01", "decode", "TruncatedHeader", ""),
    ("invalid UTF-8 in JSON", "json", b'{"type": "track", "event": "\xff\xfe"}', "decode", "InvalidUtf8", ""),
    ("invalid UTF-8 in Avro string", "*",
     VALID_CONFLUENT.replace(b"Order Completed", b"Order\xffCompleted"), "decode", "InvalidAvro", ""),
    ("broken JSON", "*", b'{"type": "track",', "decode", "InvalidJson", ""),
    ("NaN is not JSON", "json", b'{"version": NaN}', "decode", "InvalidJson", ""),
    ("lone surrogate escape", "json", b'{"userId": "\\ud800"}', "decode", "InvalidJson", ""),
    ("JSON nested past orjson's limit", "json", b"[" * 1100 + b"]" * 1100, "decode", "InvalidJson", ""),
    ("JSON array", "json", b'[{"type": "track"}]', "decode", "NotAnObject", ""),
    ("JSON string", "json", b'"track"', "decode", "NotAnObject", ""),
    ("JSON null", "json", b"null", "decode", "NotAnObject", ""),
    ("no type", "*", _json(type=DROP), "validate", "MissingField", "type"),
    ("unknown call type", "*", _json(type="purchase"), "validate", "UnknownEventType", "type"),
    ("type is not a string", "*", _json(type=["track"]), "validate", "UnknownEventType", "type"),
    ("no messageId", "*", _json(messageId=DROP), "validate", "MissingField", "messageId"),
    ("empty messageId", "*", _json(messageId=""), "validate", "EmptyValue", "messageId"),
    ("empty messageId in Avro", "*", _confluent_raw(messageId=""),
     "validate", "EmptyValue", "messageId"),
    ("neither userId nor anonymousId", "*", _json(userId=None), "validate", "MissingIdentity", "userId"),
    ("track without event", "*", _json(event=DROP), "validate", "MissingField", "event"),
    ("userId is a float", "*", _json(userId=4.2), "validate", "WrongType", "userId"),
    ("userId is a boolean", "*", _json(userId=True), "validate", "WrongType", "userId"),
    ("properties is an array", "*", _json(properties=[1, 2]), "validate", "WrongType", "properties"),
    ("context is a string", "*", _json(context="{}"), "validate", "WrongType", "context"),
    ("version beyond 64 bits", "*", _json(version=2**64 - 1), "validate", "WrongType", "version"),
    ("timestamp is not ISO-8601", "*", _json(timestamp="yesterday"), "validate", "InvalidTimestamp", "timestamp"),
    ("properties nested too deep", "*", _json(properties={"p": DEEP}), "validate", "NestingTooDeep",
     "properties.p" + ".a" * (MAX_JSON_DEPTH - 1)),
    ("Avro properties that are not JSON", "*", _confluent_raw(properties="{oops"),
     "validate", "InvalidJson", "properties"),
    ("Avro properties that are an array", "*", _confluent_raw(properties="[1]"),
     "validate", "WrongType", "properties"),
    ("Avro version that is NaN", "*", _confluent_raw(version=float("nan")),
     "validate", "WrongType", "version"),
]


@pytest.mark.parametrize(("topic", "value", "stage", "error_class", "field"),
                         [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_rejected_not_raised(topic: str, value: bytes | None, stage: str, error_class: str,
                                          field: str) -> None:
    decoder = EventDecoder(Settings()) if topic == "strict" else _decoder()
    rejection = decoder.decode(topic, value)
    assert isinstance(rejection, Rejection), rejection
    assert (rejection.stage, rejection.error_class, rejection.field) == (stage, error_class, field)
    assert rejection.reason and rejection.expected and rejection.found
    assert len(rejection.found) <= FOUND_LIMIT + 10
    assert len(rejection.message) < 400


def test_table_covers_at_least_fifteen_kinds() -> None:
    assert len({case[4] for case in BAD_INPUT}) >= 15


TOPIC_FOR_FORMAT = {"json": "json", "avro": "plain", "avro-confluent": "confluent"}


@pytest.mark.parametrize("fmt", ["json", "avro", "avro-confluent"])
def test_every_format_decodes_to_the_same_event(fmt: str) -> None:
    assert _decoder().decode(TOPIC_FOR_FORMAT[fmt], encode_event(TRACK, fmt)) == TRACK
    assert _decoder().decode("auto-detected", encode_event(TRACK, fmt)) == TRACK


def test_plain_avro_identify_looks_confluent_to_auto_detection() -> None:
    """Identify is branch 0 of event.avsc, so its plain body starts with 0x00: such topics need 'avro'."""
    identify = {"type": "identify", "messageId": "m", "userId": "u"}
    body = encode_event(identify, "avro")
    assert body[0] == 0
    assert _decoder().decode("plain", body) == identify
    assert isinstance(_decoder().decode("auto-detected", body), Rejection)


def test_json_is_detected_after_leading_whitespace() -> None:
    assert _decoder().decode("orders", b" \r\n\t" + encode_event(TRACK, "json")) == TRACK


def test_older_writer_schema_decodes_with_current_reader() -> None:
    """Track v1 (id 1) predates `channel`; its events decode with the field simply absent."""
    old_track = {k: v for k, v in TRACK.items() if k != "channel"}
    old_bytes = _confluent_raw(schema_id=1)
    assert "channel" not in {f["name"] for f in _contract().local_ids[1]["fields"]}
    assert _decoder().decode("orders", old_bytes) == old_track


def test_older_writer_schema_for_plain_avro() -> None:
    v1 = _contract().local_ids[1]
    old_track = {k: v for k, v in TRACK.items() if k != "channel"}
    stream = io.BytesIO()
    fastavro.schemaless_writer(stream, v1, {**old_track, "properties": None, "context": None})
    decoder = _decoder(avro_writer_schema=str(SCHEMAS_DIR / "segment.spec.Track.v1.avsc"))
    decoded = decoder.decode("plain", stream.getvalue())
    assert decoded == {k: v for k, v in old_track.items() if k not in ("properties", "context")}


def test_integer_ids_are_coerced_and_nulls_and_unknown_keys_dropped() -> None:
    raw = {**TRACK, "userId": 42, "anonymousId": None, "writeKey": "abc", "_metadata": {"bundled": []}}
    decoded = _decoder().decode("json", orjson.dumps(raw))
    assert decoded == {**TRACK, "userId": "42"}


@pytest.mark.parametrize("event", [
    {"type": "identify", "messageId": "m", "anonymousId": "a", "traits": {"email": "x@example.com"}},
    {"type": "page", "messageId": "m", "userId": "u", "name": "Home", "category": "Docs", "properties": {}},
    {"type": "screen", "messageId": "m", "userId": "u", "name": "Cart"},
    {"type": "group", "messageId": "m", "userId": "u", "groupId": "g-1", "traits": {"plan": "pro"}},
    {"type": "alias", "messageId": "m", "userId": "u", "previousId": "anon-1", "version": "1.1"},
])
def test_every_call_type_round_trips_through_every_format(event: dict[str, Any]) -> None:
    for fmt, topic in TOPIC_FOR_FORMAT.items():
        assert _decoder().decode(topic, encode_event(event, fmt)) == event


@pytest.mark.parametrize(("field", "value", "path"), [
    ("properties", {"a.b": DEEP}, 'properties["a.b"]' + ".a" * (MAX_JSON_DEPTH - 1)),
    ("context", {"list": [DEEP]}, "context.list[0]" + ".a" * (MAX_JSON_DEPTH - 2)),
])
def test_nesting_path_quotes_odd_keys_and_indexes_arrays(field: str, value: Any, path: str) -> None:
    for fmt in ("json", "avro-confluent"):
        rejection = _decoder().decode("orders", encode_event({**TRACK, field: value}, fmt))
        assert isinstance(rejection, Rejection) and rejection.field == path


def test_plain_avro_topic_without_writer_schema_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="AVRO_WRITER_SCHEMA"):
        EventDecoder(Settings(input_formats={"orders": "avro"}))


def test_unreadable_writer_schema_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="AVRO_WRITER_SCHEMA"):
        _decoder(avro_writer_schema=str(tmp_path / "missing.avsc"))


def test_encode_refuses_unknown_formats() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        encode_event(TRACK, "protobuf")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> SchemaRegistryClient:
    client = SchemaRegistryClient.new_client({"url": "mock://segment"})
    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(lambda conf: client))
    return client


def _register(client: SchemaRegistryClient, schema: Any, schema_type: str = "AVRO") -> int:
    return client.register_schema("orders-value", Schema(orjson.dumps(schema).decode(), schema_type))


def _framed(schema_id: int, event: dict[str, Any]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + encode_event(event, "avro-confluent")[5:]


def test_registry_resolves_ids_when_configured(registry: SchemaRegistryClient) -> None:
    with open(SCHEMAS_DIR / "segment.spec.Track.avsc", "rb") as file:
        schema_id = _register(registry, orjson.loads(file.read()))
    decoder = _decoder(schema_registry_url="mock://segment")
    assert decoder.decode_resolving("orders", _framed(schema_id, TRACK)) == TRACK
    unknown = decoder.decode_resolving("orders", _framed(schema_id + 100, TRACK))
    assert isinstance(unknown, Rejection) and unknown.error_class == "UnknownSchemaId"


@pytest.mark.parametrize(("schema", "schema_type", "error_class"), [
    ({"type": "record", "name": "segment.spec.Track", "fields": [
        {"name": "next", "type": ["null", "segment.spec.Track"]}]}, "AVRO", "UnsupportedWriterSchema"),
    ({"type": "record", "name": "com.acme.Order", "fields": []}, "AVRO", "IncompatibleSchema"),
    ({"type": "object"}, "JSON", "UnsupportedSchemaType"),
])
def test_registry_schemas_the_decoder_cannot_use_are_rejected(
        registry: SchemaRegistryClient, schema: Any, schema_type: str, error_class: str) -> None:
    schema_id = _register(registry, schema, schema_type)
    rejection = _decoder(schema_registry_url="mock://segment").decode_resolving("orders", _framed(schema_id, TRACK))
    assert isinstance(rejection, Rejection) and rejection.error_class == error_class


def _registry_down(*args: Any, **kwargs: Any) -> None:
    raise SchemaRegistryError(503, 50301, "unavailable")


def test_an_uncached_id_is_asked_for_never_waited_for(registry: SchemaRegistryClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """decode never does I/O: it names the id it needs; resolve asks, and raises while the registry is down."""
    with open(SCHEMAS_DIR / "segment.spec.Track.avsc", "rb") as file:
        schema_id = _register(registry, orjson.loads(file.read()))
    decoder = _decoder(schema_registry_url="mock://segment")
    framed = _framed(schema_id, TRACK)
    real = registry.get_schema
    monkeypatch.setattr(registry, "get_schema", _registry_down)
    assert decoder.decode("orders", framed) == SchemaNeeded(schema_id)
    with pytest.raises(SchemaRegistryUnavailable, match=f"id {schema_id}"):
        decoder.resolve(schema_id)
    assert decoder.decode("orders", framed) == SchemaNeeded(schema_id), "a failed lookup caches nothing"
    monkeypatch.setattr(registry, "get_schema", real)
    decoder.resolve(schema_id)
    assert decoder.decode("orders", framed) == TRACK


def test_a_url_without_the_registry_api_is_configuration_not_unknown_ids(registry: SchemaRegistryClient,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry answers an unregistered id with 404 and error code 40403; a URL missing the API path gets a plain
    404 for every id alike, which must hold the events (and say what to fix), never dead-letter them all."""
    def no_api_here(*args: Any, **kwargs: Any) -> None:
        raise SchemaRegistryError(404, 404, "HTTP 404 Not Found")

    monkeypatch.setattr(registry, "get_schema", no_api_here)
    decoder = _decoder(schema_registry_url="mock://segment")
    with pytest.raises(SchemaRegistryUnavailable, match="must include the API path"):
        decoder.resolve(3)
    assert decoder.decode("orders", VALID_CONFLUENT) == SchemaNeeded(3), "nothing cached: asked again later"


def test_the_registry_address_never_carries_credentials() -> None:
    decoder = _decoder(schema_registry_url="https://reader:s3cret@registry.example:8081/apis")
    assert decoder.registry_address == "https://registry.example:8081"
