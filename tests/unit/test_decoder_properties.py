"""Properties of the event contract: lossless round trips, precise rejections, and a fast JSON check
that answers exactly like fastavro.validation.validate."""

from __future__ import annotations

from datetime import timezone
from typing import Any

import orjson
from fastavro.validation import validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.contract.decoder import (
    CALL_TYPES,
    LONG_MAX,
    LONG_MIN,
    MAX_JSON_DEPTH,
    SCHEMAS_DIR,
    EventDecoder,
    _check_json_event,
    _contract,
    encode_event,
)
from pipeline.model import Rejection

DECODER = EventDecoder(Settings(input_formats={"json": "json", "plain": "avro", "confluent": "avro-confluent"},
                                avro_writer_schema=str(SCHEMAS_DIR / "event.avsc")))
TOPIC_FOR_FORMAT = {"json": "json", "avro": "plain", "avro-confluent": "confluent"}
SPEC_FIELDS = sorted({rule.name for spec in _contract().calls.values() for rule in spec.rules})

json_scalars = (st.none() | st.booleans() | st.integers(LONG_MIN, 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=10)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
ids = st.text(min_size=1, max_size=12)
timestamps = st.datetimes(timezones=st.just(timezone.utc)).map(
    lambda moment: moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"))

CALL_FIELDS = {
    "identify": {"traits": json_objects},
    "track": {"event": ids, "properties": json_objects},
    "page": {"name": st.text(max_size=8), "category": st.text(max_size=8), "properties": json_objects},
    "screen": {"name": st.text(max_size=8), "category": st.text(max_size=8), "properties": json_objects},
    "group": {"groupId": ids, "traits": json_objects},
    "alias": {"previousId": ids},
}
REQUIRED = {"track": {"event"}, "group": {"groupId"}, "alias": {"previousId"}}
COMMON_OPTIONAL = {
    "timestamp": timestamps, "originalTimestamp": timestamps, "sentAt": timestamps, "receivedAt": timestamps,
    "context": json_objects, "integrations": json_objects, "channel": st.sampled_from(["server", "browser"]),
    "version": st.integers(LONG_MIN, LONG_MAX) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
}


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    call = draw(st.sampled_from(CALL_TYPES))
    event: dict[str, Any] = {"type": call, "messageId": draw(ids)}
    identity = draw(st.sampled_from([("userId",), ("anonymousId",), ("userId", "anonymousId")]))
    for name in identity:
        event[name] = draw(ids)
    optional = {**COMMON_OPTIONAL, **CALL_FIELDS[call]}
    for name, values in optional.items():
        if name in REQUIRED.get(call, ()) or draw(st.booleans()):
            event[name] = draw(values)
    return event


def _canonical(value: Any) -> bytes:
    """Byte-exact comparison: tells 1 from 1.0 and True from 1, which == does not."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events())
def test_valid_events_round_trip_unchanged_in_every_format(event: dict[str, Any]) -> None:
    from_json = DECODER.decode("json", encode_event(event, "json"))
    assert _canonical(from_json) == _canonical(event)
    for fmt, topic in TOPIC_FOR_FORMAT.items():
        assert _canonical(DECODER.decode(topic, encode_event(from_json, fmt))) == _canonical(event), fmt


def _nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


FREE_FORM = {"identify": "traits", "track": "properties", "page": "properties", "screen": "properties",
             "group": "traits", "alias": "context"}
NOT_OBJECTS = st.one_of(st.lists(json_scalars, max_size=2), json_scalars.filter(lambda v: v is not None))
NOT_STRINGS = json_values.filter(lambda v: v is not None and type(v) is not str and type(v) is not int)


@st.composite
def spec_breaking(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, bool]:
    """A valid event with one Spec rule broken: (event, field, error_class, representable in Avro)."""
    event = draw(valid_events())
    call = event["type"]
    mutations = ["empty_message_id", "no_identity", "bad_timestamp", "too_deep", "missing_message_id",
                 "message_id_type", "unknown_type", "free_form_type", "user_id_type"]
    if call in REQUIRED:
        mutations.append("missing_required")
    mutation = draw(st.sampled_from(mutations))
    if mutation == "empty_message_id":
        return {**event, "messageId": ""}, "messageId", "EmptyValue", True
    if mutation == "no_identity":
        return ({k: v for k, v in event.items() if k not in ("userId", "anonymousId")},
                "userId", "MissingIdentity", True)
    if mutation == "bad_timestamp":
        name = draw(st.sampled_from(["timestamp", "originalTimestamp", "sentAt", "receivedAt"]))
        return {**event, name: draw(st.sampled_from(["", "yesterday", "2024-13-01", "12:00"]))}, name, \
            "InvalidTimestamp", True
    if mutation == "too_deep":
        field = FREE_FORM[call]
        return {**event, field: {"x": [_nest(MAX_JSON_DEPTH)]}}, f"{field}.x[0]" + ".n" * (MAX_JSON_DEPTH - 2), \
            "NestingTooDeep", True
    if mutation == "missing_message_id":
        return {k: v for k, v in event.items() if k != "messageId"}, "messageId", "MissingField", False
    if mutation == "message_id_type":
        return {**event, "messageId": draw(NOT_STRINGS)}, "messageId", "WrongType", False
    if mutation == "unknown_type":
        return {**event, "type": draw(st.text().filter(lambda t: t not in CALL_TYPES))}, "type", \
            "UnknownEventType", False
    if mutation == "free_form_type":
        field = FREE_FORM[call]
        return {**event, field: draw(NOT_OBJECTS)}, field, "WrongType", False
    if mutation == "user_id_type":
        return {**event, "userId": draw(NOT_STRINGS)}, "userId", "WrongType", False
    name = next(iter(REQUIRED[call]))
    return {k: v for k, v in event.items() if k != name}, name, "MissingField", False


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(spec_breaking())
def test_spec_breaking_events_are_rejected_at_the_right_field(case: tuple[dict[str, Any], str, str, bool]) -> None:
    event, field, error_class, avro_can_carry = case
    formats = TOPIC_FOR_FORMAT if avro_can_carry else {"json": "json"}
    for fmt, topic in formats.items():
        rejection = DECODER.decode(topic, encode_event(event, fmt))
        assert isinstance(rejection, Rejection), (fmt, rejection)
        assert (rejection.field, rejection.error_class) == (field, error_class), fmt
        assert rejection.stage == "validate"


# Any JSON value may land in any Spec field (or an unknown one), on top of a valid event.
perturbations = st.dictionaries(
    st.sampled_from([*SPEC_FIELDS, "extra"]),
    st.one_of(json_values.map(lambda v: v if type(v) is not int or LONG_MIN <= v <= LONG_MAX else 0),
              st.sampled_from([*CALL_TYPES, "bogus"]), json_objects, st.just(None)),
    max_size=3)


def _json_fields(raw: dict[str, Any]) -> tuple[str, ...]:
    call = raw.get("type")
    spec = _contract().calls.get(call) if type(call) is str else None
    return spec.json_fields if spec else ()


def _avro_view(raw: dict[str, Any]) -> dict[str, Any]:
    """What a producer would hand fastavro: free-form objects become their JSON text."""
    json_fields = _json_fields(raw)
    return {k: orjson.dumps(v).decode() if k in json_fields and type(v) is dict else v for k, v in raw.items()}


def _free_form_fields_hold_objects(raw: dict[str, Any]) -> bool:
    return all(raw.get(name) is None or type(raw[name]) is dict for name in _json_fields(raw))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events(), perturbations, st.lists(st.sampled_from(SPEC_FIELDS), max_size=2))
def test_fast_json_check_agrees_with_fastavro_validate(event: dict[str, Any], changes: dict[str, Any],
                                                        dropped: list[str]) -> None:
    """Avro sees free-form fields as strings, so 'is a JSON object' is the one rule checked beside it."""
    raw = {k: v for k, v in {**event, **changes}.items() if k not in dropped}
    fast_accepts = not isinstance(_check_json_event(dict(raw), _contract()), Rejection)
    fastavro_accepts = validate(_avro_view(raw), _contract().union, raise_errors=False)
    assert fast_accepts == (fastavro_accepts and _free_form_fields_hold_objects(raw))


def test_integers_beyond_64_bits_are_the_one_deliberate_difference() -> None:
    raw = {"type": "track", "messageId": "m", "userId": "u", "event": "e", "version": 2**63}
    assert validate(raw, _contract().union, raise_errors=False)  # fastavro would round it into a double
    rejection = _check_json_event(raw, _contract())
    assert isinstance(rejection, Rejection) and rejection.field == "version"
