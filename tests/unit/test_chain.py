"""The chain built from settings: consent first, then the destination filters, then the mapping; and nothing
but the mapping when neither is set."""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.model import Deliver, Secret, Skip
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.consent import ConsentRule
from pipeline.wigzo.filters import DestinationFilters, parse_filters

FILTERS = parse_filters([
    {"title": "no debug", "if": "match(event, 'Debug*')", "actions": [{"type": "DROP"}]},
    {"title": "no email", "if": "all", "actions": [
        {"type": "DROP_PROPERTIES", "fields": {"traits": ["email"], "context.traits": ["email"]}}]},
])


def chain(**overrides: Any) -> Chain:
    return Chain.from_settings(Settings(wigzo_org_token=Secret("org"), **overrides))


def identify(granted: bool) -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "messageId": "m-1",
            "traits": {"email": "ann@example.com", "phone": "+15550100", "plan": "plus"},
            "context": {"traits": {"email": "ann@example.com"},
                        "consent": {"categoryPreferences": {"Advertising": granted}}}}


def test_without_privacy_settings_the_chain_is_the_mapping_alone() -> None:
    plain = chain()
    assert plain.steps == ()
    decision, notes = plain.explain(identify(True))
    assert isinstance(decision, Deliver) and notes == {}
    assert chain(filters=parse_filters([{"title": "off", "enabled": False, "if": "all",
                                         "actions": [{"type": "DROP"}]}])).steps == ()


def test_consent_then_filters_then_the_mapping() -> None:
    private = chain(consent_categories=("Advertising",), filters=FILTERS)
    assert [type(step) for step in private.steps] == [ConsentRule, DestinationFilters]
    debug = {**identify(False), "type": "track", "event": "Debug Ping"}
    assert private.decide(debug) == Skip("consent: Advertising not granted")  # consent decides first
    assert private.decide({**debug, **{"context": identify(True)["context"]}}) == Skip("filter: no debug")
    delivered = private.decide(identify(True))
    assert isinstance(delivered, Deliver)
    (request,) = delivered.requests
    assert "email" not in request.body and request.body["phone"] == "+15550100" and request.body["plan"] == "plus"


def test_explain_gathers_each_privacy_steps_notes() -> None:
    private = chain(consent_categories=("Advertising",), filters=FILTERS)
    decision, notes = private.explain(identify(True))
    assert decision == private.decide(identify(True))
    assert notes == {"consent": "granted: Advertising", "filters": [
        {"filter": "no email", "if": "all", "action": "DROP_PROPERTIES traits: email; context.traits: email",
         "effect": "removed traits.email, context.traits.email"}]}
    assert private.explain(identify(False)) == (Skip("consent: Advertising not granted"), {
        "consent": "Advertising not granted (categoryPreferences.Advertising is false)"})
