"""What Wigzo receives for a decoded event: one pure chain of steps, the same for `run` and `transform`.

Each step looks at the event and either passes it on (possibly changed: a later privacy filter drops
properties) or decides for it (a Skip with its reason, or a Rejection). The last step is the mapping
(pipeline.wigzo.mapping), which always decides. A new step (consent, destination filters) is one more entry
in `steps`, with no change to the consume loop, which only calls `decide`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipeline.config import Settings
from pipeline.model import MappingDecision, Rejection, Skip
from pipeline.wigzo.mapping import MappingConfig, map_event

Event = dict[str, Any]
Step = Callable[[Event], Event | Skip | Rejection]  # the event to pass on, or the decision for it


@dataclass(frozen=True, slots=True)
class Chain:
    steps: tuple[Step, ...]
    mapping: Callable[[Event], MappingDecision]

    @classmethod
    def from_settings(cls, settings: Settings) -> Chain:
        return cls(steps=(), mapping=partial(map_event, config=MappingConfig.from_settings(settings)))

    def decide(self, event: Event) -> MappingDecision:
        """Deliver these requests, skip with a reason, or reject (a dead letter at stage `mapping`)."""
        for step in self.steps:
            passed = step(event)
            if isinstance(passed, (Skip, Rejection)):
                return passed
            event = passed
        return self.mapping(event)
