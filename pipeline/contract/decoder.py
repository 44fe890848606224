"""Segment event contract: Kafka message bytes in, a validated Segment event (or a Rejection) out.

Every input format (Confluent-framed Avro, plain Avro, Segment's own JSON) ends in the same plain
JSON-like dict, checked against the Avro schemas in ``schemas/``. Bad input never raises: it becomes a
Rejection the consumer can dead-letter. A Confluent-framed message whose schema id is not known yet is
neither: `decode` says which id it needs (`SchemaNeeded`) and never waits; the consume loop has the id
resolved off its thread (`pipeline.contract.registry`) and decodes the message again, because an unreachable
registry is not the message's fault and dead-lettering would lose good events.
"""

from __future__ import annotations

import io
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fastavro
import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.read import SchemaResolutionError
from fastavro.schema import load_schema, parse_schema, to_parsing_canonical_form

from pipeline.config import ConfigError, Settings
from pipeline.contract.registry import SchemaRegistryUnavailable
from pipeline.model import Rejection

# package data (a link to the top-level schemas/ in a checkout), so every kind of install finds it
SCHEMAS_DIR = Path(str(resources.files("pipeline.contract") / "schemas"))
NAMESPACE = "segment.spec"
CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
# Deep enough for any real Segment payload (the Ecommerce Spec needs 3 levels), shallow enough that
# every later stage can re-serialise it (orjson refuses to write more than 254 levels).
MAX_JSON_DEPTH = 64
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
TIMESTAMP_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
# Segment's libraries let integer ids through (userId: 42); the Spec says string, so we coerce them.
COERCED_ID_FIELDS = ("userId", "anonymousId", "groupId", "previousId")
FOUND_LIMIT = 60
_CONFLUENT_HEADER = 5
_JSON_WHITESPACE = b" \t\r\n"
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_JSON_KIND = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
              bool: "boolean", type(None): "null"}
_AVRO_PRIMITIVES: dict[str, tuple[tuple[type, ...], str]] = {
    "null": ((type(None),), "null"),
    "boolean": ((bool,), "boolean"),
    "string": ((str,), "string"),
    "long": ((int,), "integer (64-bit)"),
    "double": ((int, float), "number"),
}


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchemaNeeded:
    """The message's schema id is not cached yet: resolve it (`EventDecoder.resolve`), then decode again."""

    schema_id: int


@dataclass(frozen=True, slots=True)
class _FieldRule:
    """What a JSON value must look like to be written with one Avro field, precomputed from the schema."""

    name: str
    types: frozenset[type]
    required: bool
    symbols: frozenset[str]
    expected: str


@dataclass(frozen=True, slots=True)
class _CallSpec:
    call: str
    record_name: str
    schema: dict[str, Any]
    schema_id: int
    rules: tuple[_FieldRule, ...]
    json_fields: tuple[str, ...]
    """Free-form objects: plain dicts in JSON, their JSON text in Avro."""
    non_empty: tuple[str, ...]
    """Required strings the Spec also wants non-empty (messageId, event, groupId, previousId)."""
    float_fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to read one writer schema."""

    writer: Any
    reader: Any = None  # the current schema to resolve to; None when the writer already is it


@dataclass(frozen=True, slots=True)
class _Contract:
    """The Segment contract as read once from schemas/: each call type's rules, by name and by Avro record."""

    calls: dict[str, _CallSpec]
    by_record: dict[str, _CallSpec]
    union: list[Any]
    local_ids: dict[int, Any]


def _field_rule(field: dict[str, Any]) -> _FieldRule:
    branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
    types: set[type] = set()
    names: list[str] = []
    symbols: frozenset[str] = frozenset()
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "enum" and len(branches) == 1:
            types.add(str)
            symbols = frozenset(branch["symbols"])
            names.append("one of " + ", ".join(branch["symbols"]))
        elif branch == "string" and field.get("json") == "object":
            types.add(dict)
            names.append("JSON object")
        elif isinstance(branch, str) and branch in _AVRO_PRIMITIVES:
            python_types, name = _AVRO_PRIMITIVES[branch]
            types.update(python_types)
            if branch != "null":
                names.append(name)
        else:
            raise ValueError(f"schema field {field['name']!r} has type {branch!r}, which the fast JSON check "
                             "does not know: teach _field_rule about it (and its equivalence test)")
    return _FieldRule(field["name"], frozenset(types), "null" not in branches, symbols, " or ".join(names))


def _call_spec(call: str, schema: dict[str, Any], schema_id: int) -> _CallSpec:
    fields = schema["fields"]
    return _CallSpec(
        call=call,
        record_name=schema["name"],
        schema=schema,
        schema_id=schema_id,
        rules=tuple(_field_rule(f) for f in fields),
        json_fields=tuple(f["name"] for f in fields if f.get("json") == "object"),
        non_empty=tuple(f["name"] for f in fields if f["type"] == "string"),
        float_fields=tuple(f["name"] for f in fields if isinstance(f["type"], list) and "double" in f["type"]),
    )


@cache
def _contract() -> _Contract:
    """Load and precompile the current schemas once per process."""
    registry = orjson.loads((SCHEMAS_DIR / "registry.json").read_bytes())
    local_ids = {int(schema_id): load_schema(str(SCHEMAS_DIR / file)) for schema_id, file in registry.items()}
    current_files = {file: int(schema_id) for schema_id, file in registry.items()}
    calls = {}
    for call in CALL_TYPES:
        schema_id = current_files[f"{NAMESPACE}.{call.capitalize()}.avsc"]
        calls[call] = _call_spec(call, local_ids[schema_id], schema_id)
    union = load_schema(str(SCHEMAS_DIR / "event.avsc"))
    return _Contract(calls, {spec.record_name: spec for spec in calls.values()}, union, local_ids)


def _has_recursion(schema: Any, enclosing: tuple[str, ...] = ()) -> bool:
    """fastavro's compiled reader recurses in C with no depth check: a recursive writer schema lets
    an 8 KB message overflow the stack and kill the process, so such schemas are refused."""
    if isinstance(schema, str):
        return schema in enclosing
    if isinstance(schema, list):
        return any(_has_recursion(branch, enclosing) for branch in schema)
    kind = schema["type"]
    if kind in ("record", "error"):
        inner = (*enclosing, schema["name"])
        return any(_has_recursion(f["type"], inner) for f in schema["fields"])
    if kind == "array":
        return _has_recursion(schema["items"], enclosing)
    if kind == "map":
        return _has_recursion(schema["values"], enclosing)
    return False


def _read_plan(writer: Any, contract: _Contract) -> _ReadPlan | Rejection:
    if _has_recursion(writer):
        return Rejection("decode", "UnsupportedWriterSchema", "writer schema is recursive, which this decoder "
                         "refuses (unbounded nesting can crash the Avro reader)",
                         expected="a non-recursive Segment event schema")
    if isinstance(writer, list):
        reader = contract.union
    else:
        spec = contract.by_record.get(writer.get("name", "")) if isinstance(writer, dict) else None
        if spec is None:
            return Rejection("decode", "IncompatibleSchema", "writer schema is not a Segment event record",
                             expected=f"one of {', '.join(contract.by_record)}",
                             found=_truncate(str(writer.get("name") if isinstance(writer, dict) else writer)))
        reader = spec.schema
    same = to_parsing_canonical_form(writer) == to_parsing_canonical_form(reader)
    return _ReadPlan(writer, None if same else reader)


class EventDecoder:
    """Per-topic decoding of Kafka values into Segment events; build once, call decode per message."""

    def __init__(self, settings: Settings) -> None:
        self._contract = _contract()
        self._max_bytes = settings.max_event_bytes
        self._formats = dict(settings.input_formats)
        self._default_format = self._formats.pop("*", "auto")
        self._plain_plan = self._load_plain_plan(settings.avro_writer_schema) if settings.avro_writer_schema else None
        plain_topics = [t for t, f in settings.input_formats.items() if f == "avro"]
        if plain_topics and self._plain_plan is None:
            raise ConfigError(f"INPUT_FORMAT reads plain Avro on {', '.join(plain_topics)} but AVRO_WRITER_SCHEMA "
                              "is not set: point it at the producers' .avsc (e.g. schemas/event.avsc)")
        self._registry = (SchemaRegistryClient.new_client({"url": settings.schema_registry_url})
                          if settings.schema_registry_url else None)
        # where the registry is, for messages about it: scheme, host and port, never credentials in the URL
        address = urlsplit(settings.schema_registry_url)
        self.registry_address = f"{address.scheme}://{address.hostname}" + (f":{address.port}" if address.port
                                                                             else "")
        self._plans: dict[int, _ReadPlan | Rejection] = {}
        if self._registry is None:
            for schema_id, schema in self._contract.local_ids.items():
                self._plans[schema_id] = _read_plan(schema, self._contract)
        self._readers = {"json": self._decode_json, "avro-confluent": self._decode_confluent,
                         "avro": self._decode_plain}

    def _load_plain_plan(self, path: str) -> _ReadPlan:
        try:
            plan = _read_plan(load_schema(path), self._contract)
        except Exception as exc:  # fastavro reports unreadable files and bad schemas with many types
            raise ConfigError(f"AVRO_WRITER_SCHEMA={path!r} cannot be loaded: {exc}") from None
        if isinstance(plan, Rejection):
            raise ConfigError(f"AVRO_WRITER_SCHEMA={path!r} cannot be used: {plan.message}")
        return plan

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection | SchemaNeeded:
        """Never raises and never waits: bad input is a Rejection, an uncached schema id a SchemaNeeded."""
        if value is None:
            return Rejection("decode", "TombstoneMessage", "message value is null (a tombstone), not an event",
                             expected="a Segment event", found="null value")
        size = len(value)
        if size > self._max_bytes:
            return Rejection("decode", "EventTooLarge",
                             f"event is over the {self._max_bytes}-byte limit (MAX_EVENT_BYTES)",
                             expected=f"at most {self._max_bytes} bytes", found=f"{size} bytes")
        if not size:
            return Rejection("decode", "EmptyMessage", "message value is empty", expected="a Segment event",
                             found="0 bytes")
        fmt = self._formats.get(topic, self._default_format)
        if fmt == "auto":
            fmt = self._detect(value)
            if fmt is None:
                return Rejection("decode", "UnrecognizedFormat",
                                 "message is neither Confluent-framed Avro nor a JSON object, and plain Avro "
                                 "is off (AVRO_WRITER_SCHEMA is not set)",
                                 expected="0x00 + 4-byte schema id, or a JSON object", found=_hex_preview(value))
        return self._readers[fmt](value)

    def _detect(self, value: bytes) -> str | None:
        first = value[0]
        if first == 0 and len(value) >= _CONFLUENT_HEADER:
            return "avro-confluent"
        if first == 0x7B or (first in _JSON_WHITESPACE and value.lstrip()[:1] == b"{"):
            return "json"
        return "avro" if self._plain_plan is not None else None

    def decode_resolving(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection:
        """`decode`, asking the registry inline for an id it needs: for one-off decoding (`transform`), never the
        consume loop. Raises SchemaRegistryUnavailable when the registry cannot answer."""
        event = self.decode(topic, value)
        if isinstance(event, SchemaNeeded):
            self.resolve(event.schema_id)
            event = self.decode(topic, value)
        assert not isinstance(event, SchemaNeeded), "resolve caches every id it answers"
        return event

    def _decode_json(self, value: bytes) -> dict[str, Any] | Rejection:
        try:
            raw = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return _json_error(value, exc)
        if type(raw) is not dict:
            return Rejection("decode", "NotAnObject", "JSON message is not an object",
                             expected="a JSON object (one Segment event)", found=_preview(raw))
        for name in COERCED_ID_FIELDS:
            if type(raw.get(name)) is int:
                raw[name] = str(raw[name])
        event = _check_json_event(raw, self._contract)
        if type(event) is Rejection:
            return event
        nested = value.count(b"{") + value.count(b"[") > MAX_JSON_DEPTH
        return _check_semantics(event, self._contract.calls[event["type"]], nested)

    def _decode_confluent(self, value: bytes) -> dict[str, Any] | Rejection | SchemaNeeded:
        if value[0] != 0:
            return Rejection("decode", "WrongMagicByte", "message does not start with the Confluent magic byte",
                             expected="0x00", found=f"0x{value[0]:02x}")
        if len(value) < _CONFLUENT_HEADER:
            return Rejection("decode", "TruncatedHeader", "message is shorter than the Confluent header",
                             expected="0x00 + 4-byte schema id + Avro body", found=f"{len(value)} bytes")
        schema_id = int.from_bytes(value[1:_CONFLUENT_HEADER], "big")
        plan = self._plans.get(schema_id)
        if plan is None:
            if self._registry is None:
                return _unknown_local_id(schema_id, self._plans)
            return SchemaNeeded(schema_id)
        if type(plan) is Rejection:
            return plan
        return self._read_avro(value, _CONFLUENT_HEADER, plan)

    def _decode_plain(self, value: bytes) -> dict[str, Any] | Rejection:
        assert self._plain_plan is not None  # __init__ refuses plain-Avro topics without a writer schema
        return self._read_avro(value, 0, self._plain_plan)

    def resolve(self, schema_id: int) -> None:
        """Ask the registry for a schema id and cache the answer (a read plan, or the Rejection every message with
        that id gets). Safe on another thread than `decode`'s: each id is written once, and ids are immutable in
        a registry, so the answer is too. Raises SchemaRegistryUnavailable when the registry cannot answer."""
        assert self._registry is not None, "only a decoder with a registry returns SchemaNeeded"
        try:
            registered = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code // 100 == 404:  # 40403 "schema not found" (40400 mock)
                self._plans[schema_id] = Rejection(
                    "decode", "UnknownSchemaId", "schema id is not registered in the schema registry",
                    expected="a registered schema id", found=str(schema_id))
                return
            if exc.http_status_code == 404:  # a plain 404: no registry API at this URL, for every id alike
                raise SchemaRegistryUnavailable(
                    f"schema registry at {self.registry_address} has no schema API at the configured path "
                    f"(HTTP 404 resolving id {schema_id}); check SCHEMA_REGISTRY_URL, which must include the API "
                    "path (e.g. /apis/ccompat/v7 for Apicurio)") from exc
            raise SchemaRegistryUnavailable(f"schema registry failed to resolve id {schema_id}: {exc}") from exc
        except Exception as exc:  # transport failures surface as httpx/OS errors of many kinds
            raise SchemaRegistryUnavailable(f"schema registry is unreachable resolving id {schema_id}: {exc}") from exc
        if registered.schema_type not in (None, "AVRO"):
            plan: _ReadPlan | Rejection = Rejection(
                "decode", "UnsupportedSchemaType", "registered schema is not Avro",
                expected="AVRO", found=f"{registered.schema_type} (id {schema_id})")
        else:
            try:
                plan = _read_plan(parse_schema(orjson.loads(registered.schema_str)), self._contract)
            except Exception as exc:  # a registry can hold schemas fastavro cannot parse (e.g. with references)
                plan = Rejection("decode", "InvalidWriterSchema", "registered schema cannot be parsed",
                                 expected="a self-contained Avro schema", found=_truncate(f"id {schema_id}: {exc}"))
        self._plans[schema_id] = plan

    def _read_avro(self, value: bytes, offset: int, plan: _ReadPlan) -> dict[str, Any] | Rejection:
        stream = io.BytesIO(value)
        stream.seek(offset)
        try:
            record = fastavro.schemaless_reader(stream, plan.writer, plan.reader)
        except SchemaResolutionError as exc:
            return Rejection("decode", "IncompatibleSchema", "writer schema cannot be resolved to the current "
                             "schema", expected="a compatible writer schema", found=_truncate(str(exc)))
        except Exception as exc:  # fastavro reports corrupt bodies as EOFError, IndexError, UnicodeDecodeError...
            return Rejection("decode", "InvalidAvro", "message body is not valid Avro for its writer schema",
                             expected="an Avro-encoded Segment event", found=_truncate(f"{type(exc).__name__}: {exc}"))
        if stream.tell() != len(value):
            return Rejection("decode", "TrailingBytes", "bytes left over after the Avro record",
                             expected=f"{stream.tell()} bytes", found=f"{len(value)} bytes")
        return _conform_avro(record, self._contract)


def _unknown_local_id(schema_id: int, known: dict[int, Any]) -> Rejection:
    return Rejection("decode", "UnknownSchemaId", "schema id is not in schemas/registry.json "
                     "(set SCHEMA_REGISTRY_URL to resolve ids from a registry)",
                     expected=f"one of {sorted(known)}", found=str(schema_id))


def _check_json_event(raw: dict[str, Any], contract: _Contract) -> dict[str, Any] | Rejection:
    """The fast JSON-side equivalent of fastavro.validation.validate, driven by the precompiled rules.

    Gives the same accept/reject answer (proved by a property test), with one deliberate difference:
    integers beyond 64 bits are refused, where fastavro would let a double branch round them.
    Returns the event with the schema's fields only, absent/null optional fields omitted.
    """
    call = raw.get("type")
    spec = contract.calls.get(call) if type(call) is str else None
    if spec is None:
        if call is None:
            return Rejection("validate", "MissingField", "required field is missing", field="type",
                             expected="one of " + ", ".join(CALL_TYPES), found="nothing")
        return Rejection("validate", "UnknownEventType", "type is not a Segment Spec call", field="type",
                         expected="one of " + ", ".join(CALL_TYPES), found=_preview(call))
    event = {}
    for rule in spec.rules:
        value = raw.get(rule.name)
        if value is None:
            if rule.required:
                return Rejection("validate", "MissingField", f"{spec.call} requires {rule.name}",
                                 field=rule.name, expected=rule.expected, found="nothing")
            continue
        kind = type(value)
        if kind not in rule.types or (kind is int and not LONG_MIN <= value <= LONG_MAX):
            return Rejection("validate", "WrongType", f"{rule.name} has the wrong type", field=rule.name,
                             expected=rule.expected, found=_preview(value))
        if rule.symbols and value not in rule.symbols:
            return Rejection("validate", "InvalidValue", f"{rule.name} is not allowed here", field=rule.name,
                             expected=rule.expected, found=_preview(value))
        event[rule.name] = value
    return event


def _conform_avro(record: dict[str, Any], contract: _Contract) -> dict[str, Any] | Rejection:
    """Turn a decoded record into the JSON form: drop nulls, parse the free-form JSON text."""
    spec = contract.calls[record["type"]]
    event = {name: value for name, value in record.items() if value is not None}
    nested = False
    for name in spec.json_fields:
        text = event.get(name)
        if text is None:
            continue
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return Rejection("validate", "InvalidJson", f"{name} does not hold valid JSON text", field=name,
                             expected="the JSON text of an object", found=_truncate(f"{exc.msg} in {text!r}"))
        if type(parsed) is not dict:
            return Rejection("validate", "WrongType", f"{name} has the wrong type", field=name,
                             expected="JSON object", found=_preview(parsed))
        event[name] = parsed
        nested = nested or text.count("{") + text.count("[") > MAX_JSON_DEPTH
    for name in spec.float_fields:
        value = event.get(name)
        if type(value) is float and not math.isfinite(value):
            return Rejection("validate", "WrongType", f"{name} is not a finite number", field=name,
                             expected="a finite number", found=str(value))
    return _check_semantics(event, spec, nested)


def _check_semantics(event: dict[str, Any], spec: _CallSpec, nested: bool) -> dict[str, Any] | Rejection:
    """The Segment rules Avro cannot express, applied to every format alike.

    `nested` says the payload has enough brackets that it might be too deep; only then is it walked.
    """
    for name in spec.non_empty:
        if not event[name]:
            return Rejection("validate", "EmptyValue", f"{name} must not be empty", field=name,
                             expected="a non-empty string", found='""')
    if not event.get("userId") and not event.get("anonymousId"):
        return Rejection("validate", "MissingIdentity", "Segment requires userId or anonymousId",
                         field="userId", expected="a non-empty userId or anonymousId", found="neither")
    for name in TIMESTAMP_FIELDS:
        stamp = event.get(name)
        if stamp is not None:
            try:
                datetime.fromisoformat(stamp)
            except ValueError:
                return Rejection("validate", "InvalidTimestamp", f"{name} is not an ISO-8601 date-time",
                                 field=name, expected="ISO-8601, e.g. 2024-05-01T12:00:00.000Z",
                                 found=_preview(stamp))
    if nested:
        for name in spec.json_fields:
            if name in event:
                too_deep = _too_deep_path(event[name], [name], 1)
                if too_deep is not None:
                    return Rejection("validate", "NestingTooDeep", f"JSON nests deeper than {MAX_JSON_DEPTH} levels",
                                     field=_format_path(too_deep), expected=f"at most {MAX_JSON_DEPTH} levels",
                                     found=f"more than {MAX_JSON_DEPTH} levels")
    return event


def _too_deep_path(value: Any, path: list[str | int], depth: int) -> list[str | int] | None:
    if depth > MAX_JSON_DEPTH:
        return path
    children = value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
    for key, child in children:
        if type(child) is dict or type(child) is list:
            found = _too_deep_path(child, [*path, key], depth + 1)
            if found is not None:
                return found
    return None


def _format_path(parts: list[str | int]) -> str:
    """``properties.products[2].price``; keys that are not identifiers are quoted: ``context["a.b"]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{orjson.dumps(part).decode()}]"
    return text


def _json_error(value: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection("decode", "InvalidUtf8", "JSON message is not valid UTF-8", expected="UTF-8 text",
                         found=f"byte 0x{value[bad.start]:02x} at offset {bad.start}")
    return Rejection("decode", "InvalidJson", "message is not valid JSON", expected="a JSON object",
                     found=_truncate(f"{exc.msg} at line {exc.lineno} column {exc.colno}"))


def _truncate(text: str) -> str:
    return text if len(text) <= FOUND_LIMIT else text[:FOUND_LIMIT] + "…"


def _preview(value: Any) -> str:
    return f"{_JSON_KIND.get(type(value), type(value).__name__)} {_truncate(orjson.dumps(value).decode())}"


def _hex_preview(value: bytes) -> str:
    return f"bytes {value[:16].hex(' ')}{' …' if len(value) > 16 else ''}"


def encode_event(event: dict[str, Any], fmt: str) -> bytes:
    """Write an event as a producer would, so tests, the demo and the bench exercise real bytes.

    ``avro-confluent`` frames it with the local registry id of its call's current schema; ``avro`` is the
    bare body under schemas/event.avsc (the union of all calls). Raises ValueError for events the
    schema cannot hold.
    """
    if fmt == "json":
        return orjson.dumps(event)
    contract = _contract()
    spec = contract.calls[event["type"]]
    datum = dict(event)
    for name in spec.json_fields:
        if datum.get(name) is not None:
            datum[name] = orjson.dumps(datum[name]).decode()
    stream = io.BytesIO()
    if fmt == "avro-confluent":
        stream.write(b"\x00" + spec.schema_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(stream, spec.schema, datum)
    elif fmt == "avro":
        fastavro.schemaless_writer(stream, contract.union, (spec.record_name, datum))
    else:
        raise ValueError(f"unknown format {fmt!r}: expected avro-confluent, avro or json")
    return stream.getvalue()
