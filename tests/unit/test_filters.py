"""Destination filters as Segment's Public API writes them, applied as Segment's Destination Filters page says
(https://segment.com/docs/connections/destinations/destination-filters/): every action, their order, how they
are read and refused, and SAMPLE's determinism and accuracy (hypothesis)."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.model import Skip
from pipeline.wigzo.filters import (
    DestinationFilter,
    DestinationFilters,
    FilterError,
    describe,
    parse_filters,
    sample_fraction,
)

NO_DEBUG = {"title": "no debug", "enabled": True, "if": 'type = "track" and match(event, "Debug*")',
            "actions": [{"type": "DROP"}]}


def step(*filters: dict[str, Any]) -> DestinationFilters:
    return DestinationFilters(parse_filters(list(filters)))


def identify(**traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "messageId": "m-1", "traits": traits,
            "context": {"traits": {"email": "ctx@example.com"}, "ip": "203.0.113.9"}}


def track(name: str = "Order Completed", user: str = "u-1", **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": user, "messageId": str(uuid.uuid4()), "properties": properties}


# --- DROP ---------------------------------------------------------------------------------------------------------

def test_drop_skips_matching_events_with_the_filters_title() -> None:
    drop = step(NO_DEBUG)
    assert drop(track("Debug Ping")) == Skip("filter: no debug")
    kept = track("Order Completed")
    assert drop(kept) is kept
    assert not isinstance(drop({**kept, "type": "page", "event": "Debug Ping"}), Skip)  # only track calls


def test_if_all_matches_every_event() -> None:
    """The Destination Filters page's "Don't send userId at all" filter uses `"if": "all"`."""
    drop_all = step({"title": "everything", "if": "all", "actions": [{"type": "DROP"}]})
    assert drop_all(identify()) == Skip("filter: everything")


def test_only_send_is_a_drop_of_what_does_not_match() -> None:
    """"'Only Sends' are Drops": only send events that have a userId (the page's own example)."""
    only = step({"title": "Don't send event if userId is null", "if": "length( userId ) < 1",
                 "actions": [{"type": "DROP"}], "enabled": True})
    assert only({**track(), "userId": None}) == Skip("filter: Don't send event if userId is null")
    assert not isinstance(only(track()), Skip)


def test_disabled_filters_do_nothing() -> None:
    assert not isinstance(step({**NO_DEBUG, "enabled": False})(track("Debug Ping")), Skip)


# --- DROP_PROPERTIES and ALLOW_PROPERTIES --------------------------------------------------------------------------

def test_drop_properties_removes_named_fields_of_each_object() -> None:
    drop = step({"title": "no PII", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"traits": ["email", "phone"], "context.traits": ["email"]}}]})
    original = identify(email="a@example.com", phone="+1555", plan="plus")
    before = copy.deepcopy(original)
    filtered = drop(original)
    assert filtered == {**before, "traits": {"plan": "plus"}, "context": {"traits": {}, "ip": "203.0.113.9"}}
    assert original == before, "the event given to the filters is never changed"


def test_drop_properties_of_the_event_itself() -> None:
    """The page's "Remove userId from payload" example: fields {"": ["userId"]}."""
    drop = step({"title": "Don't send userId at all", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"": ["userId"]}}]})
    assert "userId" not in drop(track())


def test_drop_properties_reaches_every_object_of_an_array() -> None:
    """"you can filter out the `price` property of every object in an array at `properties.products`"."""
    drop = step({"title": "no prices", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"properties.products": ["price"]}}]})
    order = track(products=[{"product_id": "a", "price": 1}, {"product_id": "b"}, "not an object"])
    assert drop(order)["properties"]["products"] == [{"product_id": "a"}, {"product_id": "b"}, "not an object"]


def test_allow_properties_keeps_only_the_named_fields() -> None:
    allow = step({"title": "only ids", "if": "all", "actions": [
        {"type": "ALLOW_PROPERTIES", "fields": {"properties": ["order_id", "total"], "traits": ["email"]}}]})
    order = track(order_id="o-1", total=5, email="a@example.com", coupon="XMAS")
    assert allow(order)["properties"] == {"order_id": "o-1", "total": 5}
    assert allow(identify(email="a@example.com", phone="+1555"))["traits"] == {"email": "a@example.com"}


def test_fields_of_objects_the_event_lacks_are_left_alone() -> None:
    drop = step({"title": "no email", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"properties": ["email"], "context.page": ["url"]}}]})
    event = track(total=1)
    assert drop(event) is event  # nothing to remove: not even copied
    assert drop({**event, "properties": "text"})["properties"] == "text"


def test_property_filters_apply_only_when_their_if_matches() -> None:
    drop = step({"title": "no coupon on orders", "if": "event = 'Order Completed'", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"properties": ["coupon"]}}]})
    assert drop(track("Order Completed", coupon="X"))["properties"] == {}
    assert drop(track("Checkout Started", coupon="X"))["properties"] == {"coupon": "X"}


# --- order ----------------------------------------------------------------------------------------------------

def test_segments_order_sample_drop_drop_properties_allow_properties() -> None:
    """Written in reverse order, applied as Segment applies them; every `if` sees the event as it arrived."""
    filters = step(
        {"title": "allow", "if": "all", "actions": [
            {"type": "ALLOW_PROPERTIES", "fields": {"properties": ["a", "b"]}}]},
        {"title": "drop b", "if": "properties.b = 1", "actions": [
            {"type": "DROP_PROPERTIES", "fields": {"properties": ["b"]}}]},
        {"title": "drop when a is gone", "if": "properties.a = null", "actions": [{"type": "DROP"}]},
        {"title": "sample none", "if": "event = 'Nobody'", "actions": [{"type": "SAMPLE", "percent": 0}]},
    )
    assert filters(track(a=1, b=1, c=1))["properties"] == {"a": 1}
    assert filters(track(b=1)) == Skip("filter: drop when a is gone")
    assert filters(track("Nobody", a=1)) == Skip("filter: sample none")  # sampled out before the drop looks


def test_one_filter_may_hold_several_actions() -> None:
    both = step({"title": "trim and sample", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"properties": ["secret"]}}, {"type": "SAMPLE", "percent": 1}]})
    assert both(track(secret=1, kept=2))["properties"] == {"kept": 2}


def test_explain_names_each_filter_that_matched_and_what_it_did() -> None:
    filters = step(NO_DEBUG, {"title": "no email", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"traits": ["email"], "properties": ["email"]}}]})
    decision, notes = filters.explain(identify(email="a@example.com"))
    assert notes == {"filters": [{"filter": "no email", "if": "all",
                                  "action": "DROP_PROPERTIES traits: email; properties: email",
                                  "effect": "removed traits.email"}]}
    assert filters.explain(track("Debug Ping")) == (Skip("filter: no debug"), {"filters": [
        {"filter": "no debug", "if": NO_DEBUG["if"], "action": "DROP", "effect": "dropped the event"}]})
    assert filters.explain(track(total=1))[1]["filters"][0]["effect"] == "removed nothing: no such field"
    sample = step({"title": "half", "if": "all", "actions": [{"type": "SAMPLE", "percent": 0.5, "path": "userId"}]})
    note = sample.explain(track(user="u-1"))[1]["filters"][0]
    assert note["action"] == "SAMPLE 50% by userId"
    assert note["effect"] == f"sampled {'in' if sample_fraction('u-1') < 0.5 else 'out'}: this userId falls at " \
                             f"{sample_fraction('u-1'):.3f}"


# --- SAMPLE ---------------------------------------------------------------------------------------------------

def half(path: str = "userId") -> DestinationFilters:
    return step({"title": "half", "if": "all", "actions": [{"type": "SAMPLE", "percent": 0.5, "path": path}]})


def test_sample_edges() -> None:
    none = step({"title": "none", "if": "all", "actions": [{"type": "SAMPLE", "percent": 0}]})
    every = step({"title": "every", "if": "all", "actions": [{"type": "SAMPLE", "percent": 1, "path": "userId"}]})
    assert all(none(track(user=f"u{n}")) == Skip("filter: none") for n in range(50))
    assert not any(isinstance(every(track(user=f"u{n}")), Skip) for n in range(50))


def test_sample_without_a_path_decides_per_message_and_the_same_every_time() -> None:
    sample = step({"title": "half", "if": "all", "actions": [{"type": "SAMPLE", "percent": 0.5}]})
    events = [track() for _ in range(400)]
    first = [isinstance(sample(event), Skip) for event in events]
    assert first == [isinstance(sample(event), Skip) for event in events]
    assert 120 < sum(first) < 280


def test_sample_by_a_nested_path_and_a_missing_value() -> None:
    by_email = half("context.traits.email")
    users = [identify() | {"context": {"traits": {"email": f"{n}@example.com"}}} for n in range(200)]
    kept = sum(not isinstance(by_email(user), Skip) for user in users)
    assert 60 < kept < 140
    # every event without the value hashes alike: all in or all out together
    assert len({isinstance(by_email(track(user=f"u{n}")), Skip) for n in range(20)}) == 1


@settings(max_examples=30, deadline=None)
@given(user=st.text(min_size=1, max_size=30), percent=st.floats(0.01, 0.99),
       others=st.lists(st.dictionaries(st.sampled_from(["event", "messageId", "plan"]), st.text(max_size=8)),
                       min_size=1, max_size=5))
def test_sample_is_deterministic_per_user(user: str, percent: float, others: list[dict[str, Any]]) -> None:
    """A user is always in or always out, whatever else their events hold."""
    sample = step({"title": "s", "if": "all", "actions": [{"type": "SAMPLE", "percent": percent, "path": "userId"}]})
    decisions = {isinstance(sample({**track(user=user), **other, "userId": user}), Skip) for other in others}
    assert len(decisions) == 1
    assert decisions == {sample_fraction(user) >= percent}


@settings(max_examples=20, deadline=None)
@given(percent=st.floats(0.05, 0.95), salt=st.text(min_size=1, max_size=6))
def test_sample_keeps_close_to_its_percent_of_10000_users(percent: float, salt: str) -> None:
    """Within 0.025 (five standard deviations of a fair coin over 10,000 users) of the percent asked for."""
    sample = step({"title": "s", "if": "all", "actions": [{"type": "SAMPLE", "percent": percent, "path": "userId"}]})
    users = 10_000
    kept = sum(not isinstance(sample({"type": "track", "userId": f"{salt}-{n}"}), Skip) for n in range(users))
    assert abs(kept / users - percent) < 0.025


def test_sample_fraction_is_the_md5_of_the_json_text_as_a_fraction() -> None:
    """md5('"u-1"') is 10f26c36...f7a1 and md5('null') 37a6259c...f0bd (computed apart from the code)."""
    assert sample_fraction("u-1") == int("10f26c3616ad9e875bf989e28557f7a1", 16) / 2 ** 128
    assert sample_fraction(None) == int("37a6259cc0c1dae299a7866489dff0bd", 16) / 2 ** 128
    assert sample_fraction("1") != sample_fraction(1)  # the JSON text: "\"1\"" is not "1"


# --- reading filters as the Public API writes them -------------------------------------------------------------

def test_a_public_api_export_is_read_as_it_is() -> None:
    """The answer to listing a destination's filters, pasted whole: its ids and dates are ignored."""
    export = {"data": {"filters": [{
        "id": "2Nf5MhGzxXQw1KRnqUSuMeUWx9A", "sourceId": "rh5BDZp6QDHvXFCkibm1pR",
        "destinationId": "fP7qoQw2HTWt9WdMr718gn", "title": "no debug", "description": "Debug events stay home",
        "if": NO_DEBUG["if"], "actions": [{"type": "DROP"}], "enabled": True,
        "createdAt": "2024-03-01T10:00:00.000Z", "updatedAt": "2024-03-02T10:00:00.000Z"}],
        "pagination": {"current": "MA=="}}}
    (parsed,) = parse_filters(export)
    assert (parsed.title, parsed.if_text, parsed.enabled, parsed.actions[0].type) == (
        "no debug", NO_DEBUG["if"], True, "DROP")
    assert parse_filters({"filters": [NO_DEBUG]}) == parse_filters([NO_DEBUG])


def test_action_types_in_any_case() -> None:
    (parsed,) = parse_filters([{"title": "t", "if": "all", "actions": [
        {"type": "drop_properties", "fields": {"properties": ["a"]}}, {"type": "Sample", "percent": 0.5},
        {"type": "allow_PROPERTIES", "fields": {"traits": ["b"]}}, {"type": "drop"}]}])
    assert [action.type for action in parsed.actions] == ["DROP_PROPERTIES", "SAMPLE", "ALLOW_PROPERTIES", "DROP"]


@pytest.mark.parametrize(("document", "message"), [
    ({"title": "x"}, "must be a JSON list of destination filters"),
    (["not a filter"], "filter #1 must be an object"),
    ([{"if": "all", "actions": [{"type": "DROP"}]}], "filter #1 has no title"),
    ([{**NO_DEBUG, "if": "type = 'track' and"}],
     "filter 'no debug': its if does not parse at column 19: expected a value"),
    ([{**NO_DEBUG, "if": "type = 'track' and match(event, 'Debug*'"}],
     "filter 'no debug': its if does not parse at column 41: expected ',' or ')' to close the '(' at column 25"),
    ([{**NO_DEBUG, "if": None}], "filter 'no debug': if must be an FQL expression"),
    ([{**NO_DEBUG, "iff": "all"}], "filter 'no debug': unknown key 'iff'"),
    ([{**NO_DEBUG, "enabled": "yes"}], "filter 'no debug': enabled must be true or false"),
    ([{**NO_DEBUG, "actions": []}], "filter 'no debug': actions must be a non-empty list"),
    ([{**NO_DEBUG, "actions": [{"type": "DELETE"}]}], "an action's type must be one of SAMPLE, DROP"),
    ([{**NO_DEBUG, "actions": [{"type": "DROP", "fields": {"a": ["b"]}}]}], "the DROP action takes no 'fields'"),
    ([{**NO_DEBUG, "actions": [{"type": "SAMPLE", "percent": 50}]}], "percent from 0 to 1"),
    ([{**NO_DEBUG, "actions": [{"type": "SAMPLE"}]}], "percent from 0 to 1"),
    ([{**NO_DEBUG, "actions": [{"type": "SAMPLE", "percent": 0.5, "path": 3}]}], "path must be a dotted field"),
    ([{**NO_DEBUG, "actions": [{"type": "DROP_PROPERTIES"}]}], "the DROP_PROPERTIES action needs fields"),
    ([{**NO_DEBUG, "actions": [{"type": "ALLOW_PROPERTIES", "fields": {"properties": "email"}}]}],
     "the ALLOW_PROPERTIES action needs fields"),
    ([NO_DEBUG, NO_DEBUG], "two filters are titled 'no debug'"),
])
def test_filters_that_cannot_be_applied_are_refused_by_name(document: Any, message: str) -> None:
    with pytest.raises(FilterError) as error:
        parse_filters(document)
    assert message in str(error.value)


def test_describe_for_check() -> None:
    filters = parse_filters([NO_DEBUG, {"title": "off", "enabled": False, "if": "all", "actions": [{"type": "DROP"}]}])
    assert describe(filters) == "2 destination filter(s) parsed, 1 enabled ('no debug': DROP)"
    assert isinstance(filters[0], DestinationFilter)


def test_the_benchmarks_ten_filters_parse() -> None:
    """bench/filters.json, which bench_filters.py and pipeline_bench.py --filters measure, stays applicable."""
    bench = Path(__file__).parents[2] / "bench" / "filters.json"
    filters = parse_filters(orjson.loads(bench.read_bytes()))
    assert len(filters) == 10 and all(one.enabled for one in filters)
