"""Consent and destination filters on the real broker and the Wigzo sandbox: users who granted, refused or never
answered consent; a drop filter, a drop-properties filter and a sample filter. Every message ends in exactly
one outcome, the one the dry run (the same chain) predicts, and none goes missing; no email reaches Wigzo."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import orjson
from prometheus_client import REGISTRY

from pipeline.contract.decoder import EventDecoder
from pipeline.dev.samples import SampleMessage
from pipeline.model import Deliver, Outcome, Secret, Skip
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.filters import parse_filters
from tests.conftest import TopicFactory
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

FILTERS = parse_filters([
    {"title": "no debug", "enabled": True, "if": 'type = "track" and match(event, "Debug*")',
     "actions": [{"type": "DROP"}]},
    {"title": "no email", "enabled": True, "if": "all", "actions": [{"type": "DROP_PROPERTIES", "fields": {
        "traits": ["email"], "context.traits": ["email"], "properties": ["email"]}}]},
    {"title": "half of newsletter signups", "enabled": True, "if": "event = 'Newsletter Subscribed'",
     "actions": [{"type": "SAMPLE", "percent": 0.5, "path": "userId"}]},
])
USERS = 120
CONSENT = ("granted", "refused", "missing")  # user n's consent is CONSENT[n % 3]
REFUSED = "consent: Advertising not granted"


def consent_of(n: int) -> dict[str, Any]:
    kind = CONSENT[n % 3]
    if kind == "missing":
        return {}
    return {"consent": {"categoryPreferences": {"Advertising": kind == "granted", "Analytics": True}}}


def user_events(n: int) -> list[dict[str, Any]]:
    """What one user's shop sends: identify, two newsletter signups, a debug event, an order, an Engage identify."""
    user, email = f"user-{n:04d}", f"user-{n:04d}@example.com"

    def base(call: str, **fields: Any) -> dict[str, Any]:
        return {"type": call, "messageId": str(uuid.uuid4()), "userId": user,
                "timestamp": "2026-11-01T10:00:00.000Z", "context": {"library": {"name": "analytics.js"},
                                                                     **consent_of(n)}, **fields}

    order = base("track", event="Order Completed", properties={
        "order_id": f"order-{n}", "total": 20.0, "currency": "USD",
        "products": [{"product_id": "sku-1", "price": 20.0}]})
    order["context"]["traits"] = {"email": email}
    engage = base("identify", traits={"email": email, "vip": True}, integrations={"All": False, "Wigzo": True})
    engage["context"]["consent"] = {"categoryPreferences": {}}  # Engage, for a profile without consent
    return [
        base("identify", traits={"email": email, "phone": f"+1555{n:07d}", "plan": "plus"}),
        base("track", event="Newsletter Subscribed", properties={"email": email, "list": "weekly"}),
        base("track", event="Debug Ping", properties={"build": "dev"}),
        order,
        base("track", event="Newsletter Subscribed", properties={"email": email, "list": "daily"}),
        engage,
    ]


def skips(reason: str) -> float:
    return REGISTRY.get_sample_value("wigzo_pipeline_skips_total",
                                     {"reason": reason, "destination": "default"}) or 0.0


def keys_holding(value: Any, name: str) -> bool:
    if isinstance(value, dict):
        return name in value or any(keys_holding(item, name) for item in value.values())
    if isinstance(value, list):
        return any(keys_holding(item, name) for item in value)
    return False


def test_consent_and_filters_end_to_end_every_message_one_outcome(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=4)
    samples = [SampleMessage(f"user-{n:04d}".encode(), orjson.dumps(event), "privacy")
               for n in range(USERS) for event in user_events(n)]
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, sandbox.url, wigzo_org_token=Secret(SANDBOX_ORG_TOKEN),
                            consent_categories=("Advertising",), filters=FILTERS)

    # the dry run: what each message must become, through the same decoder and chain
    decoder, chain = EventDecoder(settings), Chain.from_settings(settings)
    decisions = [chain.decide(decoder.decode(topic, sample.value)) for sample in samples]
    assert all(isinstance(decision, (Deliver, Skip)) for decision in decisions), "the events are all mappable"
    predicted_skips = Counter(decision.reason for decision in decisions if isinstance(decision, Skip))
    assert set(predicted_skips) == {REFUSED, "filter: no debug", "filter: half of newsletter signups"}
    before = {reason: skips(reason) for reason in predicted_skips}

    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: (pipeline.status.stats.read >= len(samples)
                                           and pipeline.status.outstanding() == 0))

    # every message ends in exactly one outcome, the predicted one; none is dead-lettered or missing
    totals = pipeline.status.outcomes.totals()
    assert pipeline.status.stats.read == len(samples) == sum(totals.values())
    assert totals[Outcome.DEAD_LETTERED] == 0 and read_all(kafka_bootstrap, settings.dlq_topic_for(topic)) == []
    skipped = {detail: count for (outcome, detail), count in pipeline.status.outcomes.by_detail().items()
               if outcome is Outcome.SKIPPED}
    assert skipped == dict(predicted_skips)
    received = sandbox.control.received()
    assert received_requests(received) == predicted_requests(settings, topic, samples)
    accepted = Counter(request["idempotency_key"] for request in received)
    missing = [decision for decision in decisions if isinstance(decision, Deliver) and not all(
        accepted[dict(request.headers)["Idempotency-Key"]] for request in decision.requests)]
    assert missing == [] and totals[Outcome.DELIVERED] == sum(isinstance(d, Deliver) for d in decisions)

    # consent: refused users get nothing through, granted and missing ones (consent_missing=deliver) do
    by_user: dict[str, list[dict[str, Any]]] = {}
    for request in received:
        by_user.setdefault(request["body"]["userId"], []).append(request)
    for n in range(USERS):
        arrived = by_user.get(f"user-{n:04d}", [])
        if CONSENT[n % 3] == "refused":
            assert arrived == [], f"user {n} refused consent, yet Wigzo received {arrived[:1]}"
        else:
            assert {r["path"].rsplit("/", 1)[-1] for r in arrived} == {"identify", "event"}
    # identify, newsletter x2, debug, order and Engage identify of each refused user; the Engage identify of
    # every other user (its empty categoryPreferences grants nothing)
    assert predicted_skips[REFUSED] == (USERS // 3) * 6 + (USERS - USERS // 3)

    # the drop filter: no debug event reached Wigzo
    assert not any(r["body"].get("eventName") == "Debug Ping" for r in received)
    # the drop-properties filter: the sandbox received no email, anywhere
    assert not any(keys_holding(r["body"], "email") for r in received)
    assert "@example.com" not in orjson.dumps([r["body"] for r in received]).decode()
    assert all(r["body"].get("phone") for r in received if r["path"].endswith("/identify"))
    # the sample filter: a user's signups are all in or all out, and about half the users are in
    signups: dict[str, int] = Counter(r["body"]["userId"] for r in received
                                      if r["body"].get("eventName") == "Newsletter Subscribed")
    assert set(signups.values()) <= {2}
    passing_consent = USERS - USERS // 3
    assert 0.3 * passing_consent < len(signups) < 0.7 * passing_consent

    # skips are counted by reason in the metrics too
    assert {reason: skips(reason) - before[reason] for reason in predicted_skips} == {
        reason: float(count) for reason, count in predicted_skips.items()}
