"""Segment Consent Management for Wigzo: an event reaches Wigzo only when its user granted every consent category
Wigzo is mapped to (`consent_categories`). A chain step: pure, and first, before the destination filters.

Segment's rules, from "Consent in Segment Connections"
(https://segment.com/docs/privacy/consent-management/consent-in-segment-connections/):

- the consent object is `context.consent.categoryPreferences`, category id -> true/false; ids are case sensitive;
- a destination mapped to several categories receives an event only when every one of them is `true`; a category
  that is `false` or absent is not granted ("Reconcile CMP and Segment consent category conflicts");
- an event without a consent object flows without consent enforcement: here `consent_missing` decides, `deliver`
  (Segment's behaviour) or `skip`;
- "Reconcile consent object and integrations object conflicts": consent is looked at first, then the
  `integrations` object. Consent can only withhold an event: when it grants, the integrations object still
  applies (`Wigzo: false` skips), and that rule is the mapping's (pipeline.wigzo.mapping). The table treats an
  empty consent object (`"consent": {}`) two ways: with no integrations object as no consent object (its first
  row), beside a non-empty integrations object as one granting nothing (its fourth row). Both are followed here.

An event whose consent is not granted is skipped (never dead-lettered: it is not broken, the user said no), with
the reason `consent: <first category not granted> not granted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from pipeline.model import Skip

ConsentMissing = Literal["deliver", "skip"]
CONSENT_MISSING: tuple[str, ...] = get_args(ConsentMissing)
NO_CONSENT_OBJECT = "consent: no consent object"


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """Wigzo's consent categories and what to do with an event that carries no consent object."""

    categories: tuple[str, ...]
    missing: ConsentMissing = "deliver"

    def __call__(self, event: dict[str, Any]) -> dict[str, Any] | Skip:
        preferences = category_preferences(event)
        if preferences is None:
            return Skip(NO_CONSENT_OBJECT) if self.missing == "skip" else event
        refused = self._first_refused(preferences)
        return event if refused is None else Skip(f"consent: {refused} not granted")

    def explain(self, event: dict[str, Any]) -> tuple[dict[str, Any] | Skip, dict[str, str]]:
        """The same decision, and a line for `transform` saying why."""
        decided = self(event)
        preferences = category_preferences(event)
        if preferences is None:
            done = "skipped" if isinstance(decided, Skip) else "let through"
            return decided, {"consent": f"no consent object: {done} (consent_missing={self.missing})"}
        refused = self._first_refused(preferences)
        if refused is None:
            return decided, {"consent": f"granted: {', '.join(self.categories)}"}
        state = orjson.dumps(preferences[refused]).decode() if refused in preferences else "absent"
        return decided, {"consent": f"{refused} not granted (categoryPreferences.{refused} is {state})"}

    def _first_refused(self, preferences: dict[str, Any]) -> str | None:
        return next((category for category in self.categories if preferences.get(category) is not True), None)


def category_preferences(event: dict[str, Any]) -> dict[str, Any] | None:
    """The user's category -> granted, or None when the event carries no consent object.

    `context.consent` absent or null is no consent object; so is `{}` unless the event also has a non-empty
    integrations object (Segment's reconcile table, rows 1 and 4). Any other consent object is a decision: its
    `categoryPreferences`, where a missing or malformed one grants nothing.
    """
    context = event.get("context")
    consent = context.get("consent") if isinstance(context, dict) else None
    if consent is None:
        return None
    if consent == {}:
        integrations = event.get("integrations")
        return {} if isinstance(integrations, dict) and integrations else None
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    return preferences if isinstance(preferences, dict) else {}
