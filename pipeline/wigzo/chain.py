"""What Wigzo receives for a decoded event: one pure chain of steps, the same for `run` and `transform`.

Each step looks at the event and either passes it on (possibly changed: a destination filter drops properties)
or decides for it (a Skip with its reason, or a Rejection). The steps, in order: consent
(pipeline.wigzo.consent, when `consent_categories` is set), the destination filters (pipeline.wigzo.filters,
when any is enabled), then the mapping (pipeline.wigzo.mapping), which always decides. The consume loop only
calls `decide`; `transform` calls `explain`, which also says why each privacy step decided as it did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

from pipeline.config import Settings
from pipeline.model import MappingDecision, Rejection, Skip
from pipeline.wigzo.consent import ConsentRule
from pipeline.wigzo.filters import DestinationFilters
from pipeline.wigzo.mapping import MappingConfig, map_event

Event = dict[str, Any]
Step = Callable[[Event], Event | Skip | Rejection]  # the event to pass on, or the decision for it


@runtime_checkable
class ExplainingStep(Protocol):
    """A step that can also say why it decided: its notes, JSON-ready, become part of `transform`'s output."""

    def __call__(self, event: Event) -> Event | Skip | Rejection: ...

    def explain(self, event: Event) -> tuple[Event | Skip | Rejection, dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Chain:
    steps: tuple[Step, ...]
    mapping: Callable[[Event], MappingDecision]

    @classmethod
    def from_settings(cls, settings: Settings) -> Chain:
        steps: list[Step] = []
        if settings.consent_categories:
            steps.append(ConsentRule(settings.consent_categories, settings.consent_missing))
        if any(one.enabled for one in settings.filters):
            steps.append(DestinationFilters(settings.filters))
        return cls(steps=tuple(steps), mapping=partial(map_event, config=MappingConfig.from_settings(settings)))

    def decide(self, event: Event) -> MappingDecision:
        """Deliver these requests, skip with a reason, or reject (a dead letter at stage `mapping`)."""
        for step in self.steps:
            passed = step(event)
            if isinstance(passed, (Skip, Rejection)):
                return passed
            event = passed
        return self.mapping(event)

    def explain(self, event: Event) -> tuple[MappingDecision, dict[str, Any]]:
        """`decide`, with the notes of the steps that explain themselves (none when no privacy step is set)."""
        notes: dict[str, Any] = {}
        for step in self.steps:
            if isinstance(step, ExplainingStep):
                passed, note = step.explain(event)
                notes.update(note)
            else:
                passed = step(event)
            if isinstance(passed, (Skip, Rejection)):
                return passed, notes
            event = passed
        return self.mapping(event), notes
