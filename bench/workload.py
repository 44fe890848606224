"""The benchmark's workload: seeded Segment events every contender works on, and the requests they become.

Only `track` and `identify` calls, all valid and all enabled for Wigzo, so (nearly) every event is one
deliverable Wigzo request and the contenders compare delivery, not rejection paths. The pre-prepared
requests the floors post come from the pipeline's own decoder and chain (with the run's destination filters,
if any), so every contender sends the same bytes for the same event.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings
from pipeline.contract.decoder import EventDecoder
from pipeline.dev.samples import BASE_TIME, CATALOG, SampleMessage
from pipeline.model import Deliver, Secret
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.filters import DestinationFilter

ORG_TOKEN = "bench-org-token"
# (Segment event name or "identify", share of the stream): a storefront's mix, identify for a fifth
MIX: tuple[tuple[str, float], ...] = (("identify", 0.20), ("Product Viewed", 0.30), ("Product Added", 0.20),
                                      ("Products Searched", 0.15), ("Checkout Started", 0.05),
                                      ("Order Completed", 0.05), ("Newsletter Subscribed", 0.05))

# one pre-prepared Wigzo call: path with its query, JSON body, Idempotency-Key
Call = tuple[str, str, str]


def make_events(count: int, users: int, seed: int, first_serial: int = 0) -> list[SampleMessage]:
    """`count` JSON events (~640 bytes on average) from `users` users, keyed by user id as Segment keys them.
    `first_serial` numbers the events on from an earlier batch (their timestamps and order ids)."""
    rng = random.Random(seed)
    names = [name for name, _ in MIX]
    weights = [share for _, share in MIX]
    events = []
    for serial in range(first_serial, first_serial + count):
        user = f"user-{rng.randrange(users):05d}"
        name = rng.choices(names, weights)[0]
        event = _track(rng, user, name, serial) if name != "identify" else _identify(rng, user, serial)
        events.append(SampleMessage(user.encode(), orjson.dumps(event), name))
    return events


def _base(rng: random.Random, call: str, user: str, serial: int) -> dict[str, Any]:
    stamp = (BASE_TIME + timedelta(milliseconds=37 * serial)).isoformat(timespec="milliseconds")[:23] + "Z"
    product = rng.choice(CATALOG)
    return {
        "type": call, "messageId": str(uuid.UUID(int=rng.getrandbits(128))), "userId": user,
        "timestamp": stamp, "originalTimestamp": stamp, "sentAt": stamp, "receivedAt": stamp, "channel": "browser",
        "context": {"library": {"name": "analytics.js", "version": "5.2.0"},
                    "page": {"url": product["url"], "path": product["url"][24:], "title": product["name"]},
                    "userAgent": "Mozilla/5.0 (Macintosh) Chrome/124.0"},
        "integrations": {},
    }


def _identify(rng: random.Random, user: str, serial: int) -> dict[str, Any]:
    event = _base(rng, "identify", user, serial)
    event["traits"] = {"email": f"{user}@example.com", "name": f"Shopper {user[-5:]}",
                       "phone": f"+1555{rng.randrange(10**7):07d}", "plan": rng.choice(["free", "plus"]),
                       "address": {"city": "Berlin", "country": "DE", "postalCode": "10115"}}
    return event


def _track(rng: random.Random, user: str, name: str, serial: int) -> dict[str, Any]:
    event = _base(rng, "track", user, serial)
    event["event"] = name
    product = rng.choice(CATALOG)
    if name == "Product Viewed":
        properties: dict[str, Any] = {key: product[key] for key in ("product_id", "sku", "name", "category",
                                                                    "price", "url")}
    elif name == "Product Added":
        properties = {key: product[key] for key in ("product_id", "sku", "name", "price")} | {"quantity": 1}
    elif name == "Products Searched":
        properties = {"query": rng.choice(["phone", "running shoes", "desk lamp", "scarf"])}
    elif name == "Newsletter Subscribed":
        properties = {"list": "weekly", "source": "footer"}
    else:  # checkout and order: the ecommerce spec's totals and products
        products = [{"product_id": p["product_id"], "sku": p["sku"], "name": p["name"], "price": p["price"],
                     "quantity": rng.randint(1, 2)} for p in rng.sample(CATALOG, 2)]
        total = round(sum(p["price"] * p["quantity"] for p in products), 2)
        properties = {"order_id": f"order-{serial}", "total": total, "revenue": total, "currency": "USD",
                      "products": products}
        event["context"]["traits"] = {"email": f"{user}@example.com"}
    event["properties"] = properties
    return event


def prepare_calls(events: list[SampleMessage], filters: tuple[DestinationFilter, ...] = ()) -> tuple[list[Call],
                                                                                                   dict[str, int]]:
    """The Wigzo calls the pipeline would send for `events` (decoded and decided by its own chain, with these
    destination filters), and how many calls each deliverable event's messageId must see delivered."""
    settings = Settings(wigzo_org_token=Secret(ORG_TOKEN), filters=filters)
    decoder, chain = EventDecoder(settings), Chain.from_settings(settings)
    calls: list[Call] = []
    expected: dict[str, int] = {}
    for sample in events:
        event = decoder.decode("bench", sample.value)
        decision = chain.decide(event) if isinstance(event, dict) else None
        if not isinstance(decision, Deliver):
            continue
        for request in decision.requests:
            key = dict(request.headers)["Idempotency-Key"]
            calls.append((f"{request.path}?{urlencode(request.query)}", orjson.dumps(request.body).decode(), key))
        expected[event["messageId"]] = len(decision.requests)
    return calls, expected


def event_id(idempotency_key: str) -> str:
    """The messageId behind a request's Idempotency-Key (an event's second request is keyed `<id>:1`)."""
    return idempotency_key.split(":", 1)[0]


def delete_topics(config: Mapping[str, str], topics: list[str]) -> None:
    """Remove the benchmark's topics (those that exist) so runs leave nothing behind on the broker."""
    admin = AdminClient(dict(config))
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [topic for topic in topics if topic in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(timeout=30)
