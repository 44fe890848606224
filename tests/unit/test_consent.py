"""Consent: an event reaches Wigzo only with the consent Segment would require, run through the whole chain
(consent, then the mapping's integrations rule), so each row of Segment's "Reconcile consent object and
integrations object conflicts" table is checked end to end
(https://segment.com/docs/privacy/consent-management/consent-in-segment-connections/)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.model import Deliver, Secret, Skip
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.consent import NO_CONSENT_OBJECT, ConsentRule, category_preferences

ABSENT = object()  # no consent object at all: `"context": {}`
DELIVER = "deliver"


def chain(*categories: str, missing: str = "deliver") -> Chain:
    settings = Settings(wigzo_org_token=Secret("org"), consent_categories=categories, consent_missing=missing)
    return Chain.from_settings(settings)


def event(consent: Any = ABSENT, integrations: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A track call the mapping turns into one Wigzo request, with this consent object and integrations object."""
    context: dict[str, Any] = {"library": {"name": "analytics.js"}}
    if consent is not ABSENT:
        context["consent"] = consent
    built = {"type": "track", "event": "Newsletter Subscribed", "userId": "u-1", "messageId": "m-1",
             "context": context, **fields}
    if integrations is not None:
        built["integrations"] = integrations
    return built


def outcome(decision: Any) -> str:
    assert isinstance(decision, (Deliver, Skip)), decision
    return DELIVER if isinstance(decision, Deliver) else decision.reason


def prefs(**granted: bool) -> dict[str, Any]:
    return {"categoryPreferences": granted}


# Each row of the table as Wigzo sees it. The table's destinations are facebook, google-ads and amplitude, mapped
# to the categories `ad` and `analytics`; Wigzo plays one of them at a time: it is mapped to that destination's
# categories (`consent_categories`) and its integrations key carries that destination's value (absent when the
# destination is not in the integrations object).
RECONCILE_TABLE = [
    # row 1: no consent object, or an empty one; no integrations object or an empty one: flows to all
    ("1 no consent, no integrations", ("ad",), ABSENT, None, DELIVER),
    ("1 empty consent, no integrations", ("ad",), {}, None, DELIVER),
    ("1 no consent, empty integrations", ("ad",), ABSENT, {}, DELIVER),
    ("1 empty consent, empty integrations", ("ad",), {}, {}, DELIVER),
    # row 2: empty categoryPreferences: consent is false for every category; unmapped destinations still get it
    ("2 empty preferences, mapped", ("ad",), {"categoryPreferences": {}}, None, "consent: ad not granted"),
    ("2 empty preferences, empty integrations", ("ad",), {"categoryPreferences": {}}, {}, "consent: ad not granted"),
    ("2 empty preferences, unmapped", (), {"categoryPreferences": {}}, None, DELIVER),
    # row 3: no consent object; {facebook: true, amplitude: false}: the integrations object alone decides
    ("3 as facebook (true)", ("ad",), ABSENT, {"Facebook": True, "Wigzo": True, "Amplitude": False}, DELIVER),
    ("3 as amplitude (false)", ("analytics",), ABSENT, {"Facebook": True, "Wigzo": False},
     "integrations.Wigzo is false"),
    # row 4: empty consent object (either form) beside that integrations object: mapped destinations get nothing,
    # even those `true` in it; unmapped ones follow the integrations object
    ("4 empty consent, as facebook", ("ad",), {}, {"Wigzo": True, "Amplitude": False}, "consent: ad not granted"),
    ("4 empty preferences, as facebook", ("ad",), {"categoryPreferences": {}}, {"Wigzo": True, "Amplitude": False},
     "consent: ad not granted"),
    ("4 empty consent, unmapped and true", (), {}, {"Wigzo": True, "Amplitude": False}, DELIVER),
    ("4 empty consent, unmapped, not included", (), {}, {"Facebook": True, "Amplitude": False}, DELIVER),
    ("4 empty consent, unmapped and false", (), {}, {"Facebook": True, "Wigzo": False},
     "integrations.Wigzo is false"),
    # row 5: categories Segment maps to no destination: every destination is unmapped; integrations still apply
    ("5 unmapped", (), prefs(ad=True, analytics=False), None, DELIVER),
    ("5 unmapped, integrations false", (), prefs(ad=True, analytics=False), {"Wigzo": False},
     "integrations.Wigzo is false"),
    # row 6: ad = facebook, google-ads; no integrations object
    ("6 as an ad destination", ("ad",), prefs(ad=True, analytics=False), None, DELIVER),
    ("6 as an analytics destination", ("analytics",), prefs(ad=True, analytics=False), None,
     "consent: analytics not granted"),
    # row 7: ad = facebook, google-ads; analytics = amplitude; {facebook: true, amplitude: false}
    ("7 as google-ads", ("ad",), prefs(ad=True, analytics=False), {"Facebook": True, "Amplitude": False}, DELIVER),
    ("7 as facebook", ("ad",), prefs(ad=True, analytics=False), {"Wigzo": True, "Amplitude": False}, DELIVER),
    ("7 as amplitude", ("analytics",), prefs(ad=True, analytics=False), {"Facebook": True, "Wigzo": False},
     "consent: analytics not granted"),
    # row 8: the same with {facebook: false, amplitude: false}
    ("8 as google-ads", ("ad",), prefs(ad=True, analytics=False), {"Facebook": False, "Amplitude": False}, DELIVER),
    ("8 as facebook", ("ad",), prefs(ad=True, analytics=False), {"Wigzo": False, "Amplitude": False},
     "integrations.Wigzo is false"),
    ("8 as amplitude", ("analytics",), prefs(ad=True, analytics=False), {"Facebook": False, "Wigzo": False},
     "consent: analytics not granted"),
    # row 9: facebook mapped to ad and analytics: every category must be granted
    ("9 as facebook", ("ad", "analytics"), prefs(ad=True, analytics=False), {"Wigzo": True, "Amplitude": False},
     "consent: analytics not granted"),
    ("9 as google-ads", ("ad",), prefs(ad=True, analytics=False), {"Facebook": True, "Amplitude": False}, DELIVER),
    ("9 as amplitude", ("analytics",), prefs(ad=True, analytics=False), {"Facebook": True, "Wigzo": False},
     "consent: analytics not granted"),
    # row 10: both granted
    ("10 as facebook", ("ad", "analytics"), prefs(ad=True, analytics=True), {"Wigzo": True, "Amplitude": False},
     DELIVER),
    ("10 as google-ads", ("ad",), prefs(ad=True, analytics=True), {"Facebook": True, "Amplitude": False}, DELIVER),
    ("10 as amplitude", ("analytics",), prefs(ad=True, analytics=True), {"Facebook": True, "Wigzo": False},
     "integrations.Wigzo is false"),
    # row 11: ad refused: nothing flows anywhere
    ("11 as facebook", ("ad", "analytics"), prefs(ad=False, analytics=True), {"Wigzo": True, "Amplitude": False},
     "consent: ad not granted"),
    ("11 as google-ads", ("ad",), prefs(ad=False, analytics=True), {"Facebook": True, "Amplitude": False},
     "consent: ad not granted"),
    ("11 as amplitude", ("analytics",), prefs(ad=False, analytics=True), {"Facebook": True, "Wigzo": False},
     "integrations.Wigzo is false"),
]


@pytest.mark.parametrize(("row", "categories", "consent", "integrations", "expected"), RECONCILE_TABLE,
                         ids=[case[0] for case in RECONCILE_TABLE])
def test_segments_reconcile_table(row: str, categories: tuple[str, ...], consent: Any,
                                  integrations: dict[str, Any] | None, expected: str) -> None:
    assert outcome(chain(*categories).decide(event(consent, integrations))) == expected


def test_every_category_must_be_granted_and_the_reason_names_the_first_that_is_not() -> None:
    decide = chain("Advertising", "Analytics").decide
    assert outcome(decide(event(prefs(Advertising=True, Analytics=True, Functional=False)))) == DELIVER
    assert outcome(decide(event(prefs(Advertising=False, Analytics=False)))) == "consent: Advertising not granted"
    assert outcome(decide(event(prefs(Advertising=True)))) == "consent: Analytics not granted"  # absent
    assert outcome(decide(event(prefs(Analytics=True)))) == "consent: Advertising not granted"


@pytest.mark.parametrize("value", ["true", 1, None, {"granted": True}, [True]])
def test_only_true_grants(value: Any) -> None:
    assert outcome(chain("Advertising").decide(event({"categoryPreferences": {"Advertising": value}}))) == \
        "consent: Advertising not granted"


def test_category_ids_are_case_sensitive() -> None:
    """Segment: the category ID "is case sensitive"."""
    assert outcome(chain("Advertising").decide(event(prefs(advertising=True)))) == "consent: Advertising not granted"


@pytest.mark.parametrize("consent", [{"categoryPreferences": "all"}, {"other": True}, "yes", ["Advertising"], True])
def test_a_malformed_consent_object_grants_nothing(consent: Any) -> None:
    assert outcome(chain("Advertising").decide(event(consent))) == "consent: Advertising not granted"


@pytest.mark.parametrize("context", [None, {}, {"consent": None}, "not an object"])
def test_no_consent_object_follows_consent_missing(context: Any) -> None:
    built = {**event(), "context": context}
    assert outcome(chain("Advertising").decide(built)) == DELIVER
    assert outcome(chain("Advertising", missing="skip").decide(built)) == NO_CONSENT_OBJECT
    assert category_preferences(built) is None


def test_engage_identify_calls_follow_the_same_rule() -> None:
    """Engage sends `{"All": false, "Wigzo": true}` and, for a profile without consent, an empty
    categoryPreferences (Segment's "Consent in Engage Audiences"): skipped; with consent, delivered."""
    engage = {"type": "identify", "userId": "u-1", "messageId": "m-1", "traits": {"email": "a@example.com",
                                                                                   "vip_audience": True},
              "integrations": {"All": False, "Wigzo": True}}
    decide = chain("Advertising").decide
    granted = {**engage, "context": {"consent": prefs(Advertising=True)}}
    assert outcome(decide(granted)) == DELIVER
    assert outcome(decide({**engage, "context": {"consent": {"categoryPreferences": {}}}})) == \
        "consent: Advertising not granted"
    assert outcome(decide({**engage, "context": {"consent": prefs(Advertising=False)}})) == \
        "consent: Advertising not granted"


@pytest.mark.parametrize("call", ["identify", "track", "page", "screen", "group", "alias"])
def test_every_call_type_is_held_to_consent_before_anything_else(call: str) -> None:
    """Consent comes first: a refused screen call is skipped for consent, not for being a screen call."""
    refused = {**event(prefs(Advertising=False)), "type": call}
    assert outcome(chain("Advertising").decide(refused)) == "consent: Advertising not granted"


def test_without_categories_consent_is_not_looked_at() -> None:
    assert chain().steps == ()
    assert outcome(chain().decide(event(prefs(Advertising=False)))) == DELIVER


def test_explain_says_why() -> None:
    rule = ConsentRule(("Advertising", "Analytics"))
    assert rule.explain(event(prefs(Advertising=True, Analytics=True)))[1] == {
        "consent": "granted: Advertising, Analytics"}
    assert rule.explain(event(prefs(Advertising=True, Analytics=False)))[1] == {
        "consent": "Analytics not granted (categoryPreferences.Analytics is false)"}
    assert rule.explain(event(prefs(Advertising=True)))[1] == {
        "consent": "Analytics not granted (categoryPreferences.Analytics is absent)"}
    assert rule.explain(event())[1] == {"consent": "no consent object: let through (consent_missing=deliver)"}
    assert ConsentRule(("Advertising",), "skip").explain(event()) == (
        Skip(NO_CONSENT_OBJECT), {"consent": "no consent object: skipped (consent_missing=skip)"})


def test_the_event_passes_on_unchanged() -> None:
    granted = event(prefs(Advertising=True))
    assert ConsentRule(("Advertising",))(granted) is granted
