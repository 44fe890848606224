"""Segment Destination Filters for Wigzo: the filters a team already has on Segment's Wigzo destination, pasted
as the Public API returns them, applied as Segment applies them. A chain step: pure, after consent, before the
mapping, so `transform` shows exactly what Wigzo receives.

From "Destination Filters" (https://segment.com/docs/connections/destinations/destination-filters/) and the
Public API's filter shape (https://docs.segmentapis.com/tag/Destination-Filters):

- a filter is `{"title", "if", "actions", "enabled"}` (plus `id`, `description`, `sourceId`, `destinationId`,
  `createdAt`, `updatedAt`, ignored); `if` is an FQL expression (pipeline.wigzo.fql) or `all`;
- an action is `{"type": "DROP"}`, `{"type": "SAMPLE", "percent": 0..1, "path": "userId"}`, or
  `{"type": "DROP_PROPERTIES" | "ALLOW_PROPERTIES", "fields": {"properties": ["email"], "traits": ["phone"]}}`,
  where `fields` maps the dotted path of an object (`""` for the event itself) to names inside it; an object
  path that holds a list applies to each object in it (`"properties.products": ["price"]`), as Segment's
  evaluator does (segmentio/tsub-js, `transformers.ts`);
- "Segment applies destination filters in the following order: Sample, Drop ('Only Sends' are Drops), Drop
  Properties, Allow Properties." Every filter's `if` is evaluated once, on the event as it reached the filters.

SAMPLE keeps the events whose `path` value hashes below `percent`: the MD5 of the value's JSON text read as a
fraction of 1, Segment's sampling hash (tsub-js, after github.com/segmentio/sampler), so one user is always in or
always out. Without a `path` Segment samples at random; here the messageId is hashed instead: each event in or
out on its own, and the same answer every time the event is read (replay, redelivery).

A dropped or sampled-out event is skipped with the reason `filter: <title>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from pipeline.model import Skip
from pipeline.wigzo.fql import Evaluator, FqlError, Query, parse

Event = dict[str, Any]
SAMPLE, DROP, DROP_PROPERTIES, ALLOW_PROPERTIES = "SAMPLE", "DROP", "DROP_PROPERTIES", "ALLOW_PROPERTIES"
ACTION_ORDER = (SAMPLE, DROP, DROP_PROPERTIES, ALLOW_PROPERTIES)  # Segment's order of application
FILTER_KEYS = frozenset({"title", "if", "actions", "enabled"})
IGNORED_KEYS = frozenset({"id", "description", "sourceId", "destinationId", "createdAt", "updatedAt"})
ACTION_KEYS = {DROP: frozenset(), SAMPLE: frozenset({"percent", "path"}), DROP_PROPERTIES: frozenset({"fields"}),
               ALLOW_PROPERTIES: frozenset({"fields"})}
MATCH_ALL = "all"


class FilterError(ValueError):
    """A filter that cannot be applied as written; the message names the filter and what to fix."""


@dataclass(frozen=True, slots=True)
class Action:
    type: str  # one of ACTION_ORDER
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()  # DROP_PROPERTIES/ALLOW_PROPERTIES: object path -> names
    percent: float = 1.0  # SAMPLE
    path: str = ""  # SAMPLE: the dotted path whose value decides; "" is the messageId

    def describe(self) -> str:
        if self.type == SAMPLE:
            return f"SAMPLE {self.percent:.0%} by {self.path or 'messageId'}"
        if self.type == DROP:
            return DROP
        objects = (f"{path or '(the event)'}: {', '.join(names)}" for path, names in self.fields)
        return f"{self.type} {'; '.join(objects)}"


@dataclass(frozen=True, slots=True)
class DestinationFilter:
    """One filter as Segment's Public API writes it, its `if` parsed (None for `all`)."""

    title: str
    condition: Query | None
    actions: tuple[Action, ...]
    enabled: bool = True

    @property
    def reason(self) -> str:
        return f"filter: {self.title}"

    @property
    def if_text(self) -> str:
        return self.condition.text if self.condition is not None else MATCH_ALL


# --- reading filters as the Public API writes them -------------------------------------------------------------

def parse_filters(document: Any) -> tuple[DestinationFilter, ...]:
    """Filters from a list of them, or from the Public API's answer to listing a destination's filters
    (`{"data": {"filters": [...]}}`), disabled ones included; FilterError naming the filter otherwise."""
    if isinstance(document, dict):
        document = document.get("data", document)
        document = document.get("filters") if isinstance(document, dict) else None
    if not isinstance(document, list):
        raise FilterError('must be a JSON list of destination filters as Segment\'s Public API returns them, e.g. '
                          '[{"title": "no debug", "enabled": true, "if": "type = \\"track\\" and match(event, '
                          '\\"Debug*\\")", "actions": [{"type": "DROP"}]}]')
    filters = tuple(_filter(number, raw) for number, raw in enumerate(document, start=1))
    titles = [one.title for one in filters]
    repeated = sorted({title for title in titles if titles.count(title) > 1})
    if repeated:
        raise FilterError(f"two filters are titled {repeated[0]!r}: rename one, since a skipped event's reason "
                          "names the filter that dropped it")
    return filters


def _filter(number: int, raw: Any) -> DestinationFilter:
    if not isinstance(raw, dict):
        raise FilterError(f"filter #{number} must be an object with title, if and actions")
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        raise FilterError(f"filter #{number} has no title: give it the title it has in Segment")
    where = f"filter {title!r}"
    unknown = sorted(set(raw) - FILTER_KEYS - IGNORED_KEYS)
    if unknown:
        raise FilterError(f"{where}: unknown key {unknown[0]!r}; a filter has title, if, actions and enabled")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FilterError(f"{where}: enabled must be true or false")
    condition_text = raw.get("if")
    if not isinstance(condition_text, str):
        raise FilterError(f"{where}: if must be an FQL expression as a string, or \"all\"")
    try:
        condition = None if condition_text.strip() == MATCH_ALL else parse(condition_text)
    except FqlError as error:
        raise FilterError(f"{where}: its if does not parse at column {error.column}: {error.problem}") from None
    actions = raw.get("actions")
    if not isinstance(actions, list) or not actions:
        raise FilterError(f"{where}: actions must be a non-empty list, e.g. [{{\"type\": \"DROP\"}}]")
    return DestinationFilter(title, condition, tuple(_action(where, raw_action) for raw_action in actions), enabled)


def _action(where: str, raw: Any) -> Action:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or kind.upper() not in ACTION_KEYS:
        raise FilterError(f"{where}: an action's type must be one of {', '.join(ACTION_ORDER)}, found {kind!r}")
    kind = kind.upper()
    extra = sorted(set(raw) - {"type"} - ACTION_KEYS[kind])
    if extra:
        raise FilterError(f"{where}: the {kind} action takes no {extra[0]!r}")
    if kind == SAMPLE:
        percent, path = raw.get("percent"), raw.get("path", "")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 1:
            raise FilterError(f"{where}: a SAMPLE action needs a percent from 0 to 1 (0.1 keeps 10 %), "
                              f"found {percent!r}")
        if not isinstance(path, str):
            raise FilterError(f"{where}: a SAMPLE action's path must be a dotted field path such as userId")
        return Action(SAMPLE, percent=float(percent), path=path)
    if kind == DROP:
        return Action(DROP)
    fields = raw.get("fields")
    if (not isinstance(fields, dict) or not fields or not all(
            isinstance(names, list) and names and all(isinstance(name, str) for name in names)
            for names in fields.values())):
        raise FilterError(f"{where}: the {kind} action needs fields: an object path mapped to the names in it, "
                          'e.g. {"properties": ["email"], "traits": ["phone"]}')
    return Action(kind, fields=tuple((path, tuple(names)) for path, names in fields.items()))


# --- applying them -------------------------------------------------------------------------------------------

def sample_fraction(value: Any) -> float:
    """Where a value falls in [0, 1): the MD5 of its JSON text as a fraction, as Segment's samplers hash."""
    digest = hashlib.md5(orjson.dumps(value), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big") / 2 ** 128


class _Step(NamedTuple):
    """One action of one enabled filter, where Segment's order puts it."""

    index: int  # the filter's place among the enabled ones
    filter: DestinationFilter
    action: Action
    condition: Evaluator | None  # the filter's `if`; None for `all`
    shared: bool  # the filter has other actions, which reuse its `if`'s answer


@dataclass(frozen=True, slots=True)
class DestinationFilters:
    """The chain step applying the enabled filters, in Segment's order."""

    filters: tuple[DestinationFilter, ...]
    _plan: tuple[_Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        enabled = [one for one in self.filters if one.enabled]
        plan = [_Step(index, one, action, None if one.condition is None else one.condition.evaluate,
                      len(one.actions) > 1)
                for index, one in enumerate(enabled) for action in one.actions]
        plan.sort(key=lambda step: ACTION_ORDER.index(step.action.type))  # stable: filters keep their order
        object.__setattr__(self, "_plan", tuple(plan))

    def __call__(self, event: Event) -> Event | Skip:
        return self._apply(event, None)

    def explain(self, event: Event) -> tuple[Event | Skip, dict[str, Any]]:
        """The same decision, and for `transform` each filter that matched: what it did."""
        notes: list[dict[str, str]] = []
        return self._apply(event, notes), {"filters": notes}

    def _apply(self, event: Event, notes: list[dict[str, str]] | None) -> Event | Skip:
        arrived = event
        matched: dict[int, bool] = {}  # a filter with several actions: its `if`, evaluated once
        for index, one, action, condition, shared in self._plan:
            hit = matched.get(index) if shared else None
            if hit is None:
                hit = condition is None or condition(arrived) is True
                if shared:
                    matched[index] = hit
            if not hit:
                continue
            if action.type == SAMPLE:
                fraction = sample_fraction(_value_at(arrived, action.path) if action.path else arrived.get("messageId"))
                kept = fraction < action.percent
                if notes is not None:
                    notes.append(_note(one, action, f"sampled {'in' if kept else 'out'}: this "
                                                    f"{action.path or 'messageId'} falls at {fraction:.3f}"))
                if not kept:
                    return Skip(one.reason)
            elif action.type == DROP:
                if notes is not None:
                    notes.append(_note(one, action, "dropped the event"))
                return Skip(one.reason)
            else:
                removed: list[str] | None = [] if notes is not None else None
                event = _remove_fields(event, action.fields, action.type == ALLOW_PROPERTIES, removed)
                if notes is not None:
                    notes.append(_note(one, action, f"removed {', '.join(removed)}" if removed else
                                       "removed nothing: no such field"))
        return event


def _note(one: DestinationFilter, action: Action, effect: str) -> dict[str, str]:
    return {"filter": one.title, "if": one.if_text, "action": action.describe(), "effect": effect}


def _value_at(event: Event, path: str) -> Any:
    value: Any = event
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _remove_fields(event: Event, fields: tuple[tuple[str, tuple[str, ...]], ...], keep: bool,
                   removed: list[str] | None) -> Event:
    """The event without the named fields (`keep`: without every other field) of each object path; the
    objects on the way are copied, never changed, so the event the filters were given stays as it was."""
    for path, names in fields:
        keys = tuple(path.split(".")) if path else ()
        changed = _edited(event, keys, names, keep, f"{path}." if path else "", removed)
        if changed is not None:
            event = changed
    return event


def _edited(value: Any, keys: tuple[str, ...], names: tuple[str, ...], keep: bool, label: str,
            removed: list[str] | None) -> Any:
    """`value` with the object at `keys` filtered (each object, where a list is there), copying only what
    changes; None when nothing does."""
    if keys:
        if not isinstance(value, dict) or keys[0] not in value:
            return None
        child = _edited(value[keys[0]], keys[1:], names, keep, label, removed)
        return None if child is None else {**value, keys[0]: child}
    if isinstance(value, dict):
        return _filtered(value, names, keep, label, removed)
    if isinstance(value, list):
        label = f"{label.rstrip('.')}[]."
        items = [_filtered(item, names, keep, label, removed) if isinstance(item, dict) else None for item in value]
        if all(item is None for item in items):
            return None
        return [new if new is not None else old for new, old in zip(items, value, strict=True)]
    return None


def _filtered(target: dict[str, Any], names: tuple[str, ...], keep: bool, label: str,
              removed: list[str] | None) -> dict[str, Any] | None:
    gone = [key for key in target if (key in names) != keep]
    if not gone:
        return None
    if removed is not None:
        removed.extend(f"{label}{key}" for key in gone)
    return {key: value for key, value in target.items() if key not in gone}


def describe(filters: tuple[DestinationFilter, ...]) -> str:
    """One line for `check`: how many filters parsed, which are enabled, and their actions."""
    enabled = [one for one in filters if one.enabled]
    shown = "; ".join(f"{one.title!r}: {', '.join(action.type for action in one.actions)}" for one in enabled)
    return f"{len(filters)} destination filter(s) parsed, {len(enabled)} enabled" + (f" ({shown})" if shown else "")
