"""The mapping answers every valid event with a decision, never an exception, and never leaks a token."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.model import Deliver, Rejection, Secret, Skip
from pipeline.wigzo.mapping import (
    DEFAULT_EVENT_NAMES,
    EVENT_PATH,
    IDENTIFY_PATH,
    MappingConfig,
    map_event,
)

ORG, API = "org-TOKEN-9f2", "api-TOKEN-7c1"
CONFIG = MappingConfig(org_token=Secret(ORG), api_token=Secret(API))

json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False,
                                                                                    allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
# Keys the mapping reads, so generated values land where they matter, with any type.
known_keys = st.sampled_from([
    "product_id", "productId", "url", "name", "price", "currency", "category", "brand", "sku", "variant",
    "image_url", "query", "order_id", "total", "revenue", "subtotal", "shipping", "tax", "discount", "coupon",
    "quantity", "email", "phone", "firstName", "lastName", "createdAt", "title", "path",
])
free_dict = st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=6)
product = free_dict | json_values
properties = st.fixed_dictionaries({}, optional={"products": st.lists(product, max_size=4) | json_values}).flatmap(
    lambda base: free_dict.map(lambda extra: {**extra, **base}))
address = st.fixed_dictionaries({}, optional={k: json_values for k in ("city", "state", "postalCode", "country")})
traits = free_dict.flatmap(lambda extra: st.fixed_dictionaries({}, optional={"address": address | json_values})
                           .map(lambda base: {**extra, **base}))
integration_key = st.sampled_from(["All", "Wigzo", "wigzo", "WIGZO", "Mixpanel"])
integrations = st.dictionaries(integration_key, st.booleans() | free_dict | json_values, max_size=3)
context = st.fixed_dictionaries({}, optional={
    "page": st.fixed_dictionaries({}, optional={"url": json_values}) | json_values,
    "traits": traits | json_values,
    "library": st.fixed_dictionaries({"name": st.sampled_from(["analytics.js", "analytics-ios"]) | json_values}),
    "active": json_values,
    "personas": free_dict,
})
ids = st.text(max_size=6)

events = st.fixed_dictionaries(
    {"type": st.sampled_from(["identify", "track", "page", "screen", "group", "alias"])},
    optional={
        "userId": ids, "anonymousId": ids, "messageId": ids, "timestamp": st.text(max_size=25),
        "channel": st.sampled_from(["browser", "server", "mobile"]),
        "event": st.sampled_from(sorted(DEFAULT_EVENT_NAMES)) | st.text(max_size=10),
        "name": st.text(max_size=10),
        "properties": properties, "traits": traits, "context": context, "integrations": integrations,
    },
)


@settings(max_examples=300)
@given(events)
def test_mapping_never_raises_and_always_decides(event: dict[str, Any]):
    decision = map_event(event, CONFIG)
    assert isinstance(decision, Deliver | Skip | Rejection)
    if isinstance(decision, Skip):
        assert decision.reason
    if isinstance(decision, Rejection):
        assert decision.stage == "mapping" and decision.error_class and decision.reason and decision.field
        assert ORG not in decision.message and API not in decision.message


@settings(max_examples=300)
@given(events)
def test_every_request_is_complete_and_serialisable(event: dict[str, Any]):
    decision = map_event(event, CONFIG)
    if not isinstance(decision, Deliver):
        return
    assert decision.requests
    keys = [dict(request.headers).get("Idempotency-Key") for request in decision.requests]
    assert len(set(keys)) == len(keys)
    for request in decision.requests:
        assert request.method == "POST"
        assert request.query == (("token", API), ("org_token", ORG))
        assert ORG not in repr(request.redacted_query()) and API not in repr(request.redacted_query())
        body = orjson.loads(orjson.dumps(request.body))
        assert isinstance(body["userId"], str) and body["userId"].strip()
        assert body["source"] in ("web", "app")
        if request.path == IDENTIFY_PATH:
            assert body.get("email") or body.get("phone")
        else:
            assert request.path == EVENT_PATH
            assert body["eventCategory"] == "EXTERNAL"
            assert isinstance(body["eventval"], dict) and body["eventName"]


@given(events, integrations)
def test_disabled_wigzo_is_always_a_skip(event: dict[str, Any], extra: dict[str, Any]):
    event = {**event, "integrations": {**extra, "Wigzo": False}}
    assert isinstance(map_event(event, CONFIG), Skip)
