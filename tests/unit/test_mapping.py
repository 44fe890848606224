"""Every row of the mapping table, each skip and reject reason, as data."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.model import Deliver, Rejection, Secret, Skip
from pipeline.wigzo.mapping import (
    DEFAULT_EVENT_NAMES,
    EVENT_PATH,
    IDENTIFY_PATH,
    MappingConfig,
    map_event,
)

CONFIG = MappingConfig(org_token=Secret("org-secret"), api_token=Secret("api-secret"))

PAGE_URL = "https://shop.example/p/40"


def track(name: str, properties: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "track", "event": name, "messageId": "m-1", "userId": "u-1",
                             "properties": properties or {}, "context": {"page": {"url": PAGE_URL}}}
    event.update(fields)
    return event


def only_request(decision: Deliver | Skip | Rejection):
    assert isinstance(decision, Deliver), decision
    assert len(decision.requests) == 1
    return decision.requests[0]


def eventval(decision: Deliver | Skip | Rejection) -> dict[str, Any]:
    request = only_request(decision)
    assert request.path == EVENT_PATH
    return request.body["eventval"]


PRODUCT = {"product_id": "40", "name": "iPhone", "category": "Mobile Phones", "brand": "Apple",
           "price": 18.99, "currency": "usd"}
ORDER_PRODUCTS = [
    {"product_id": "40", "sku": "IP-40", "variant": "Black", "quantity": 2, "price": 18.99,
     "name": "iPhone", "category": "Phones", "brand": "Apple"},
    {"product_id": 41, "sku": "CASE-1", "price": 5},
    {"product_id": "42", "quantity": 1.0},
]

# (Segment event name, properties, extra event fields, expected Wigzo event name, expected eventval)
TRACK_ROWS = [
    ("Product Viewed", PRODUCT, {"integrations": {"Wigzo": {"imageUrl": "https://img/40.jpg",
                                                             "description": "A phone", "language": "en"}}},
     "product_view", {"productId": "40", "canonicalUrl": PAGE_URL, "title": "iPhone", "description": "A phone",
                      "price": 18.99, "currency": "usd", "image": "https://img/40.jpg",
                      "category": "Mobile Phones", "language": "en", "vendor": "Apple"}),
    ("Product Clicked", {**PRODUCT, "url": "https://shop.example/canonical/40", "image_url": "https://img/p.jpg",
                         "sku": "IP-40", "variant": "Black"}, {},
     "product_view", {"productId": "40", "canonicalUrl": "https://shop.example/canonical/40", "title": "iPhone",
                      "price": 18.99, "currency": "usd", "image": "https://img/p.jpg", "category": "Mobile Phones",
                      "vendor": "Apple",
                      "variants": [{"variant_id": "Black", "product_id": "40", "title": "Black", "sku": "IP-40",
                                    "image": "https://img/p.jpg", "price": 18.99}]}),
    ("Product Added", {"product_id": "40", "quantity": 1}, {}, "addtocart", {"productId": "40"}),
    ("Wishlist Product Added to Cart", {"product_id": 40}, {}, "addtocart", {"productId": "40"}),
    ("Product Added to Cart from Wishlist", {"productId": "40"}, {}, "addtocart", {"productId": "40"}),
    ("Product Removed", {"product_id": "40"}, {}, "removedfromcart", {"productId": "40"}),
    ("Product Added to Wishlist", {"product_id": "40"}, {}, "wishlist", {"productId": "40"}),
    ("Products Searched", {"query": "blue shoes"}, {}, "search", {"query": "blue shoes"}),
    ("Product Reviewed", {"product_id": "40", "rating": 5, "review_body": "Great"}, {},
     "review", {"product_id": "40", "rating": 5, "review_body": "Great"}),
    ("Checkout Started", {"products": ORDER_PRODUCTS[:1], "currency": "USD", "total": 42.5, "revenue": 37.98,
                          "tax": 3, "discount": 1.5, "shipping": 4}, {},
     "checkout_started",
     {"line_items": [{"product_id": "40", "variant_id": "Black", "quantity": 2, "price": 18.99, "title": "iPhone",
                      "sku": "IP-40", "vendor": "Apple", "categories": ["Phones"]}],
      "productIds": ["40"], "currency": "USD", "total_price": 42.5, "total_discounts": 1.5, "total_tax": 3,
      "abandoned_checkout_url": PAGE_URL}),
    ("Order Completed", {"order_id": "o-9", "products": ORDER_PRODUCTS, "total": 47.98, "subtotal": 42.98,
                         "shipping": 4, "tax": 2.5, "discount": 1.5, "coupon": "SPRING", "currency": "USD"},
     {"context": {"traits": {"email": "ann@example.com", "phone": "+15550100", "firstName": "Ann",
                             "lastName": "Lee"}}},
     "order_completed",
     {"orderId": "o-9", "customer_id": "u-1", "total_price": 47.98, "total_line_items_price": 42.98,
      "total_discounts": 1.5, "shipping_cost": 4, "total_tax": 2.5, "currency": "USD", "coupons": ["SPRING"],
      "email": "ann@example.com", "phone": "+15550100", "fullName": "Ann Lee",
      "line_items": [
          {"product_id": "40", "variant_id": "Black", "quantity": 2, "price": 18.99, "title": "iPhone",
           "sku": "IP-40", "vendor": "Apple", "categories": ["Phones"]},
          {"product_id": "41", "variant_id": "CASE-1", "quantity": 1, "price": 5, "sku": "CASE-1"},
          {"product_id": "42", "variant_id": "42", "quantity": 1}],
      "productIds": ["40", "41", "42"]}),
    ("Order Completed", {"order_id": 1001, "products": [{"product_id": "40"}], "revenue": 30}, {},
     "order_completed",
     {"orderId": "1001", "customer_id": "u-1", "total_price": 30, "total_line_items_price": 30,
      "line_items": [{"product_id": "40", "variant_id": "40", "quantity": 1}], "productIds": ["40"]}),
    ("Signed Up", {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}}, {},
     "Signed Up", {"plan": "pro", "seats": 3, "nested": {"a": [1, 2]}}),
    ("Audience Entered", {"audience_key": "vip"}, {}, "Audience Entered", {"audience_key": "vip"}),
    ("Trait Computed", {"trait_key": "ltv", "trait_value": 120}, {},
     "Trait Computed", {"trait_key": "ltv", "trait_value": 120}),
]


@pytest.mark.parametrize(("name", "properties", "extra", "wigzo_name", "expected"), TRACK_ROWS,
                         ids=[f"{row[0]}->{row[3]}" for row in TRACK_ROWS])
def test_track_events_map_to_wigzo_events(name, properties, extra, wigzo_name, expected):
    request = only_request(map_event(track(name, properties, **extra), CONFIG))
    assert request.method == "POST"
    assert request.path == EVENT_PATH
    assert request.query == (("token", "api-secret"), ("org_token", "org-secret"))
    assert request.headers == (("Idempotency-Key", "m-1"),)
    assert request.body == {"eventName": wigzo_name, "eventval": expected, "eventCategory": "EXTERNAL",
                            "userId": "u-1", "source": "web"}


def test_every_default_event_name_has_a_row():
    assert {row[0] for row in TRACK_ROWS} >= set(DEFAULT_EVENT_NAMES)


def test_page_is_a_view_with_its_properties_its_url_and_its_name_as_title():
    event = {"type": "page", "messageId": "m-1", "anonymousId": "anon-1", "name": "Pricing",
             "properties": {"url": "https://shop.example/pricing", "title": "Pricing | Shop", "path": "/pricing"}}
    assert eventval(map_event(event, CONFIG)) == {
        "url": "https://shop.example/pricing", "title": "Pricing", "path": "/pricing",
        "canonicalUrl": "https://shop.example/pricing"}


def test_page_without_name_keeps_its_title_and_takes_the_url_from_context():
    event = {"type": "page", "messageId": "m-1", "userId": "u-1", "properties": {"title": "Home"},
             "context": {"page": {"url": "https://shop.example/"}}}
    decision = map_event(event, CONFIG)
    assert only_request(decision).body["eventName"] == "view"
    assert eventval(decision) == {"title": "Home", "canonicalUrl": "https://shop.example/"}


def test_identify_maps_named_traits_and_keeps_every_other_trait_as_a_user_property():
    event = {"type": "identify", "messageId": "m-1", "userId": "u-1", "timestamp": "2024-05-01T10:00:00Z",
             "traits": {"email": "ann@example.com", "phone": "+15550100", "firstName": "Ann", "lastName": "Lee",
                        "address": {"city": "Pune", "state": "MH", "postalCode": "411001", "country": "India"},
                        "createdAt": "2023-01-02T00:00:00Z", "plan": "gold", "tags": ["a", "b"]}}
    request = only_request(map_event(event, CONFIG))
    assert request.path == IDENTIFY_PATH
    assert request.query == (("token", "api-secret"), ("org_token", "org-secret"))
    assert request.body == {
        "userId": "u-1", "email": "ann@example.com", "phone": "+15550100", "fullName": "Ann Lee",
        "firstName": "Ann", "lastName": "Lee", "customer_id": "u-1", "postal_code": "411001", "city": "Pune",
        "state": "MH", "country": "India", "createdAt": "2023-01-02T00:00:00Z",
        "updatedAt": "2024-05-01T10:00:00Z", "source": "web", "plan": "gold", "tags": ["a", "b"]}


def test_identify_name_trait_becomes_full_name():
    event = {"type": "identify", "userId": "u-1", "traits": {"phone": 15550100, "name": "Ann Lee"}}
    body = only_request(map_event(event, CONFIG)).body
    assert body["fullName"] == "Ann Lee" and body["phone"] == "15550100"
    assert "name" not in body and "email" not in body


def test_engage_audience_identify_reaches_wigzo_unchanged_as_user_properties():
    event = {"type": "identify", "messageId": "engage-1", "userId": "u-1", "channel": "server",
             "traits": {"email": "ann@example.com", "order_completed_last_30days": True, "vip_buyers": False},
             "context": {"personas": {"computation_class": "audience", "computation_key": "order_completed_last_30days",
                                      "space_id": "spa_1"}},
             "integrations": {"All": False, "Wigzo": True}}
    body = only_request(map_event(event, CONFIG)).body
    assert body["order_completed_last_30days"] is True
    assert body["vip_buyers"] is False
    assert body["email"] == "ann@example.com"


def test_identify_contact_falls_back_to_context_traits():
    event = {"type": "identify", "userId": "u-1", "traits": {"vip": True},
             "context": {"traits": {"email": "ann@example.com"}}}
    assert only_request(map_event(event, CONFIG)).body["email"] == "ann@example.com"


def test_mapped_fields_win_over_traits_of_the_same_name():
    event = {"type": "identify", "userId": "u-1", "anonymousId": "a-1",
             "traits": {"email": "ann@example.com", "userId": "spoofed", "source": "facebook", "city": "Goa"}}
    body = only_request(map_event(event, CONFIG)).body
    assert (body["userId"], body["source"], body["city"]) == ("u-1", "web", "Goa")


def test_anonymous_visitor_is_identified_by_anonymous_id_and_has_no_customer_id():
    identify = {"type": "identify", "anonymousId": "anon-1", "traits": {"email": "ann@example.com"}}
    body = only_request(map_event(identify, CONFIG)).body
    assert body["userId"] == "anon-1" and "customer_id" not in body
    viewed = track("Product Viewed", PRODUCT, userId="")
    viewed.pop("userId")
    viewed["anonymousId"] = "anon-1"
    assert only_request(map_event(viewed, CONFIG)).body["userId"] == "anon-1"


def test_anonymous_order_uses_anonymous_id_as_customer_id():
    event = track("Order Completed", {"order_id": "o-1", "products": [{"product_id": "1"}]}, anonymousId="anon-1")
    event.pop("userId")
    assert eventval(map_event(event, CONFIG))["customer_id"] == "anon-1"


@pytest.mark.parametrize(("fields", "source"), [
    ({"channel": "browser"}, "web"),
    ({"channel": "server"}, "web"),
    ({"channel": "mobile"}, "app"),
    ({"context": {"library": {"name": "analytics-ios"}}}, "app"),
    ({"context": {"library": {"name": "analytics.js"}}}, "web"),
    ({"channel": "server", "context": {"library": {"name": "analytics-kotlin"}}}, "web"),
    ({}, "web"),
])
def test_source_is_app_for_mobile_events_and_web_otherwise(fields, source):
    assert only_request(map_event(track("Signed Up", **fields), CONFIG)).body["source"] == source


@pytest.mark.parametrize(("active", "expected"), [(True, True), (False, False), ("yes", None), (None, None)])
def test_is_active_is_segment_context_active_when_stated(active, expected):
    context = {} if active is None else {"active": active}
    body = only_request(map_event(track("Signed Up", context=context), CONFIG)).body
    assert body.get("is_active") == expected


def test_api_token_is_sent_only_when_set():
    config = MappingConfig(org_token=Secret("org-secret"), api_token=Secret(""))
    assert only_request(map_event(track("Signed Up"), config)).query == (("org_token", "org-secret"),)


def test_no_message_id_means_no_idempotency_header():
    event = track("Signed Up")
    event.pop("messageId")
    assert only_request(map_event(event, CONFIG)).headers == ()


INTEGRATIONS_ROWS = [
    ({"Wigzo": False}, "integrations.Wigzo is false"),
    ({"wigzo": False}, "integrations.Wigzo is false"),
    ({"WIGZO": False, "All": True}, "integrations.Wigzo is false"),
    ({"All": False}, "integrations.All is false and Wigzo is not enabled"),
    ({"All": False, "Mixpanel": True}, "integrations.All is false and Wigzo is not enabled"),
    ({"All": False, "Wigzo": True}, None),
    ({"All": False, "wigzo": True}, None),
    ({"All": False, "Wigzo": {"imageUrl": "https://img"}}, None),
    ({"All": True}, None),
    ({"Mixpanel": False}, None),
    ({"Wigzo": True}, None),
    ({}, None),
]


@pytest.mark.parametrize(("integrations", "skip_reason"), INTEGRATIONS_ROWS)
def test_integrations_object_enables_or_disables_wigzo(integrations, skip_reason):
    decision = map_event(track("Signed Up", integrations=integrations), CONFIG)
    if skip_reason is None:
        assert isinstance(decision, Deliver)
    else:
        assert decision == Skip(skip_reason)


def test_wigzo_options_are_read_under_any_key_case():
    event = track("Product Viewed", PRODUCT, integrations={"wIGZO": {"imageUrl": "https://img/1.jpg"}})
    assert eventval(map_event(event, CONFIG))["image"] == "https://img/1.jpg"


@pytest.mark.parametrize("call", ["screen", "group", "alias"])
def test_call_types_wigzo_does_not_take_are_skipped(call):
    assert map_event({"type": call, "userId": "u-1", "messageId": "m"}, CONFIG) == Skip(
        f"Wigzo does not take {call} calls")


def test_event_name_map_renames_skips_and_reshapes():
    config = MappingConfig.from_settings(Settings(
        wigzo_org_token=Secret("org"), event_name_map={"Heartbeat": None, "Signed Up": "signup",
                                                       "Viewed Item": "product_view", "Product Viewed": "pdp"}))
    assert map_event(track("Heartbeat"), config) == Skip("event name map skips 'Heartbeat'")
    assert only_request(map_event(track("Signed Up", {"plan": "pro"}), config)).body["eventName"] == "signup"
    assert eventval(map_event(track("Viewed Item", PRODUCT), config))["productId"] == "40"
    assert eventval(map_event(track("Product Viewed", PRODUCT), config)) == PRODUCT
    assert only_request(map_event(track("Product Added", {"product_id": "1"}), config)).body["eventName"] == \
        "addtocart"


def test_from_settings_keeps_tokens_secret():
    config = MappingConfig.from_settings(Settings(wigzo_org_token=Secret("org-xyz"), wigzo_api_token=Secret("api-xyz")))
    assert "xyz" not in repr(config)
    assert config.query() == (("token", "api-xyz"), ("org_token", "org-xyz"))


# (event, error_class, field)
REJECT_ROWS = [
    ({"type": "identify", "userId": "u-1", "traits": {"name": "Ann"}}, "MissingContact", "traits.email"),
    ({"type": "identify", "userId": "u-1", "traits": {"email": 5, "phone": True}}, "MissingContact", "traits.email"),
    ({"type": "identify", "traits": {"email": "a@b.c"}}, "MissingUserId", "userId"),
    (track("Product Viewed", {"name": "iPhone"}), "MissingProductId", "properties.product_id"),
    (track("Product Viewed", {"product_id": {"id": 1}}), "InvalidProductId", "properties.product_id"),
    (track("Product Viewed", {"product_id": ""}), "InvalidProductId", "properties.product_id"),
    (track("Product Viewed", {"product_id": "40"}, context={}), "MissingCanonicalUrl", "properties.url"),
    (track("Product Clicked", {"product_id": "40", "url": 7}, context={"page": {}}), "MissingCanonicalUrl",
     "properties.url"),
    (track("Product Added", {}), "MissingProductId", "properties.product_id"),
    (track("Product Removed", {"product_id": True}), "InvalidProductId", "properties.product_id"),
    (track("Product Added to Wishlist", {}), "MissingProductId", "properties.product_id"),
    (track("Wishlist Product Added to Cart", {}), "MissingProductId", "properties.product_id"),
    (track("Products Searched", {}), "MissingQuery", "properties.query"),
    (track("Products Searched", {"query": "  "}), "MissingQuery", "properties.query"),
    (track("Checkout Started", {}), "MissingProducts", "properties.products"),
    (track("Checkout Started", {"products": [{"name": "x"}]}), "MissingProductId",
     "properties.products[0].product_id"),
    (track("Order Completed", {"products": [{"product_id": "1"}]}), "MissingOrderId", "properties.order_id"),
    (track("Order Completed", {"order_id": 1.5, "products": [{"product_id": "1"}]}), "InvalidOrderId",
     "properties.order_id"),
    (track("Order Completed", {"order_id": "o", "products": []}), "MissingProducts", "properties.products"),
    (track("Order Completed", {"order_id": "o", "products": "40"}), "MissingProducts", "properties.products"),
    (track("Order Completed", {"order_id": "o", "products": [{"product_id": "1"}, "2"]}), "InvalidProduct",
     "properties.products[1]"),
    (track("Order Completed", {"order_id": "o", "products": [{"product_id": "1"}, {"sku": "2"}]}),
     "MissingProductId", "properties.products[1].product_id"),
    (track("Order Completed", {"order_id": "o", "products": [{"product_id": "1", "quantity": 0}]}),
     "InvalidQuantity", "properties.products[0].quantity"),
    (track("Order Completed", {"order_id": "o", "products": [{"product_id": "1", "quantity": "2"}]}),
     "InvalidQuantity", "properties.products[0].quantity"),
    (track(""), "MissingEventName", "event"),
    ({"type": "bogus", "userId": "u"}, "UnknownCallType", "type"),
]


@pytest.mark.parametrize(("event", "error_class", "field"), REJECT_ROWS,
                         ids=[f"{row[1]}-{index}" for index, row in enumerate(REJECT_ROWS)])
def test_wigzo_requirements_are_rejected_before_any_request(event, error_class, field):
    decision = map_event(event, CONFIG)
    assert isinstance(decision, Rejection), decision
    assert (decision.stage, decision.error_class, decision.field) == ("mapping", error_class, field)
    assert decision.reason and decision.expected and decision.found
    assert "secret" not in decision.message


def test_skip_wins_over_reject_when_wigzo_is_disabled():
    assert isinstance(map_event(track("Product Viewed", {}, integrations={"Wigzo": False}), CONFIG), Skip)


def test_further_requests_of_one_event_get_suffixed_idempotency_keys():
    from pipeline.wigzo.mapping import (
        _request,  # the one place keys are made; no default row sends two requests yet
    )

    keys = [_request(track("x"), CONFIG, index, EVENT_PATH, {}).headers for index in range(3)]
    assert keys == [(("Idempotency-Key", "m-1"),), (("Idempotency-Key", "m-1:1"),), (("Idempotency-Key", "m-1:2"),)]


def test_wrong_typed_optional_fields_are_left_out():
    properties = {"product_id": "40", "url": PAGE_URL, "price": "cheap", "name": ["x"], "currency": 3}
    assert eventval(map_event(track("Product Viewed", properties), CONFIG)) == {
        "productId": "40", "canonicalUrl": PAGE_URL}
