"""A seeded stream of realistic Segment traffic for the demo, tests and benchmarks.

Shoppers browse, search, add to cart, check out and order; Engage computes audiences; every event carries
its user's consent (some refused advertising, some never answered); some events have Wigzo disabled, some
break the contract or Wigzo's rules, and a few are not events at all.
The same seed always yields the same bytes.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pipeline.contract.decoder import encode_event

BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)
CATALOG = [
    {"product_id": f"sku-{n}", "sku": f"SKU{n:04d}", "name": name, "category": category, "brand": brand,
     "price": price, "url": f"https://shop.example.com/p/{n}", "image_url": f"https://cdn.example.com/{n}.jpg"}
    for n, (name, category, brand, price) in enumerate([
        ("iPhone", "Mobile Phones", "Apple", 18.99), ("Pixel", "Mobile Phones", "Google", 15.5),
        ("Trail Runner", "Shoes", "Salomon", 129.0), ("Espresso Maker", "Kitchen", "Bialetti", 39.95),
        ("Wool Scarf", "Accessories", "Acne", 85.0), ("Desk Lamp", "Home", "Muuto", 220.0),
    ], start=40)
]


def _consent(user: str | None) -> dict[str, Any]:
    """Each user's consent, as a CMP stamps it on every event: fixed per user and drawn from no random number, so
    the stream is otherwise what it was. Users ending in 0 refused advertising, those ending in 1 never answered
    (no consent object), the others granted both categories."""
    last = user[-1:] if user else ""
    if last == "1":
        return {}
    return {"consent": {"categoryPreferences": {"Advertising": last != "0", "Analytics": True}}}


@dataclass(frozen=True, slots=True)
class SampleMessage:
    key: bytes | None
    value: bytes | None
    kind: str  # what the sample is meant to exercise, e.g. "track:Order Completed" or "garbage"


class SampleStream:
    def __init__(self, seed: int = 7, users: int = 50, avro_share: float = 0.3) -> None:
        self._rng = random.Random(seed)
        self._users = [f"user-{n:04d}" for n in range(users)]
        self._avro_share = avro_share
        self._clock = BASE_TIME
        self._serial = 0

    def messages(self, count: int) -> Iterator[SampleMessage]:
        """`count` messages: mostly shopper sessions, with Engage, disabled, invalid and garbage mixed in."""
        produced = 0
        while produced < count:
            for message in self._next_batch():
                if produced == count:
                    return
                produced += 1
                yield message

    # ---- building blocks ----

    def _next_batch(self) -> list[SampleMessage]:
        roll = self._rng.random()
        if roll < 0.70:
            return self._shopper_session()
        if roll < 0.78:
            return [self._engage_identify(), self._engage_track()]
        if roll < 0.84:
            return [self._other_call()]
        if roll < 0.88:
            return [self._disabled()]
        if roll < 0.96:
            return [self._invalid()]
        return [self._garbage()]

    def _base(self, call: str, user: str | None, anonymous: bool = False) -> dict[str, Any]:
        self._serial += 1
        self._clock += timedelta(milliseconds=self._rng.randint(5, 900))
        stamp = self._clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event: dict[str, Any] = {
            "type": call,
            "messageId": str(uuid.UUID(int=self._rng.getrandbits(128))),
            "timestamp": stamp, "originalTimestamp": stamp, "sentAt": stamp, "receivedAt": stamp,
            "channel": "browser",
            "context": {"library": {"name": "analytics.js", "version": "5.2.0"},
                        "page": {"url": "https://shop.example.com/", "path": "/", "title": "Shop"},
                        "userAgent": "Mozilla/5.0", "ip": "203.0.113.9", **_consent(user)},
            "integrations": {},
        }
        if anonymous or user is None:
            event["anonymousId"] = f"anon-{self._rng.getrandbits(40):010x}"
        else:
            event["userId"] = user
        return event

    def _encode(self, event: dict[str, Any], kind: str, key: str | None) -> SampleMessage:
        fmt = "avro-confluent" if self._rng.random() < self._avro_share else "json"
        return SampleMessage(key.encode() if key else None, encode_event(event, fmt), kind)

    def _json(self, event: dict[str, Any], kind: str, key: str | None) -> SampleMessage:
        return SampleMessage(key.encode() if key else None, orjson.dumps(event), kind)

    def _track(self, user: str, name: str, properties: dict[str, Any], anonymous: bool = False) -> dict[str, Any]:
        event = self._base("track", user, anonymous)
        event["event"] = name
        event["properties"] = properties
        return event

    def _shopper_session(self) -> list[SampleMessage]:
        user = self._rng.choice(self._users)
        anonymous = self._rng.random() < 0.15
        key = None if anonymous else user
        messages = []
        identify = self._base("identify", user)
        identify["traits"] = {"email": f"{user}@example.com", "name": f"Shopper {user[-4:]}",
                              "phone": f"+1555{self._rng.randint(1000000, 9999999)}",
                              "address": {"city": "Berlin", "country": "DE", "postalCode": "10115"}}
        if not anonymous:
            messages.append(self._encode(identify, "identify", key))
        page = self._base("page", user, anonymous)
        page.update(name="Home", properties={"url": "https://shop.example.com/", "path": "/", "title": "Shop"})
        messages.append(self._encode(page, "page", key))
        if self._rng.random() < 0.4:
            query = self._rng.choice(["phone", "shoes", "lamp", "scarf"])
            messages.append(self._encode(self._track(user, "Products Searched", {"query": query}, anonymous),
                                         "track:Products Searched", key))
        cart = self._rng.sample(CATALOG, self._rng.randint(1, 3))
        for product in cart:
            viewed = self._track(user, "Product Viewed", {**product, "currency": "usd"}, anonymous)
            viewed["context"]["page"] = {"url": product["url"], "path": product["url"][26:], "title": product["name"]}
            viewed["integrations"] = {"Wigzo": {"imageUrl": product["image_url"], "description": product["name"],
                                                "language": "en"}}
            messages.append(self._encode(viewed, "track:Product Viewed", key))
            added = self._track(user, "Product Added", {**product, "quantity": 1}, anonymous)
            messages.append(self._encode(added, "track:Product Added", key))
        if self._rng.random() < 0.2:
            removed = self._track(user, "Product Removed", dict(cart[0]), anonymous)
            messages.append(self._encode(removed, "track:Product Removed", key))
        if anonymous or self._rng.random() < 0.3:
            return messages
        products = [{**p, "quantity": self._rng.randint(1, 2)} for p in cart]
        total = round(sum(p["price"] * p["quantity"] for p in products), 2)
        messages.append(self._encode(self._track(user, "Checkout Started", {
            "order_id": f"order-{self._serial}", "value": total, "revenue": total, "currency": "USD",
            "products": products}), "track:Checkout Started", key))
        if self._rng.random() < 0.7:
            order = self._track(user, "Order Completed", {
                "order_id": f"order-{self._serial}", "total": total + 5.0, "subtotal": total, "revenue": total,
                "shipping": 5.0, "tax": 0.0, "discount": 0.0, "coupon": "", "currency": "USD",
                "products": products})
            order["context"]["traits"] = {"email": f"{user}@example.com"}
            messages.append(self._encode(order, "track:Order Completed", key))
        return messages

    def _engage_identify(self) -> SampleMessage:
        user = self._rng.choice(self._users)
        event = self._base("identify", user)
        event["traits"] = {"email": f"{user}@example.com",
                           "order_completed_last_30days": self._rng.random() < 0.5}
        event["context"]["personas"] = {"computation_class": "audience", "computation_key":
                                        "order_completed_last_30days", "space_id": "spa_demo"}
        event["integrations"] = {"All": False, "Wigzo": True}
        return self._encode(event, "identify:engage", user)

    def _engage_track(self) -> SampleMessage:
        user = self._rng.choice(self._users)
        event = self._track(user, "Audience Entered", {"audience_key": "order_completed_last_30days"})
        event["context"]["traits"] = {"email": f"{user}@example.com"}
        event["integrations"] = {"All": False, "Wigzo": True}
        return self._encode(event, "track:Audience Entered", user)

    def _other_call(self) -> SampleMessage:
        user = self._rng.choice(self._users)
        call = self._rng.choice(["screen", "group", "alias"])
        event = self._base(call, user)
        if call == "screen":
            event.update(name="Home", properties={})
        elif call == "group":
            event.update(groupId="acme", traits={"name": "Acme"})
        else:
            event["previousId"] = f"anon-{self._serial}"
        return self._encode(event, call, user)

    def _disabled(self) -> SampleMessage:
        user = self._rng.choice(self._users)
        event = self._track(user, "Coupon Applied", {"coupon": "XMAS"})
        event["integrations"] = self._rng.choice([{"Wigzo": False}, {"All": False}, {"wigzo": False}])
        return self._encode(event, "track:disabled", user)

    def _invalid(self) -> SampleMessage:
        """Breaks the Segment contract (validate) or Wigzo's rules (mapping)."""
        user = self._rng.choice(self._users)
        flavour = self._rng.randrange(5)
        if flavour == 0:
            event = self._track(user, "Signed Up", {})
            del event["userId"]
            return self._json(event, "invalid:no-user", user)
        if flavour == 1:
            event = self._track(user, "x", {})
            del event["event"]
            return self._json(event, "invalid:track-without-event", user)
        if flavour == 2:
            return self._encode(self._track(user, "Product Viewed", {"name": "No id"}),
                                "invalid:product-without-id", user)
        if flavour == 3:
            return self._encode(self._track(user, "Order Completed", {"order_id": "o-1", "products": []}),
                                "invalid:order-without-products", user)
        event = self._base("identify", user)
        event["traits"] = {"name": "No Contact"}
        return self._encode(event, "invalid:identify-without-contact", user)

    def _garbage(self) -> SampleMessage:
        flavour = self._rng.randrange(4)
        if flavour == 0:
            return SampleMessage(b"garbage", bytes(self._rng.getrandbits(8) for _ in range(40)), "garbage:random")
        if flavour == 1:
            return SampleMessage(b"garbage", b'{"type": "track", "event": ', "garbage:truncated-json")
        if flavour == 2:
            return SampleMessage(b"garbage", b"\x00\x00\x00\x03\xe7\x02\x04", "garbage:unknown-schema")
        return SampleMessage(b"garbage", b"[1, 2, 3]", "garbage:json-array")
