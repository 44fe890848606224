"""Telling a mapping that cannot work from bad events, before anything is dead-lettered.

One event the mapping rejects is that event's fault, and it is dead-lettered. But when `threshold` distinct
events in a row are rejected the same way (same error class at the same field) with no event mapped in
between, the cause is something they all share: an event-name map (WIGZO_EVENT_MAP) that sends every
checkout to a payload its events cannot fill, a producer that stopped sending a field. Dead-lettering the
stream would only bury the operator in letters to redrive. So from the threshold on, events failing that way
are held: unfinished, so nothing past them is committed, and the member reports itself unready with the
reason. The next event that maps is the probe that settles it: the mapping works, so the held events were
bad after all and are dead-lettered. A restart with a fixed configuration reads the held events again.

Pure bookkeeping (no Kafka, no clock), used from the polling thread only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pipeline.model import Rejection
from pipeline.wigzo.policy import FailureStreak

Held = TypeVar("Held")


class MappingStreak(Generic[Held]):
    """The streak of identical mapping rejections and the events it holds back (whatever the caller needs to
    dead-letter one later)."""

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._streak: FailureStreak[tuple[str, str]] = FailureStreak(threshold)
        self._held: list[Held] = []
        self._first: Rejection | None = None  # the rejection that made the streak systemic, for the reason

    @property
    def held(self) -> int:
        return len(self._held)

    def rejected(self, rejection: Rejection, item: Held) -> bool:
        """Count one more rejected event; True when it is held rather than to be dead-lettered now."""
        if not self._streak.failed((rejection.error_class, rejection.field)):
            return False
        if not self._held:
            self._first = rejection
        self._held.append(item)
        return True

    def mapped(self) -> list[Held]:
        """An event mapped: the streak is over, and whatever it held is to be dead-lettered now."""
        self._streak.succeeded()
        held, self._held = self._held, []
        return held

    def let_go(self, kept: Callable[[Held], bool]) -> list[Held]:
        """Forget the held events `kept` rejects (their partition was released: uncommitted, the next owner
        reads them again); returns them."""
        dropped = [item for item in self._held if not kept(item)]
        if dropped:
            self._held = [item for item in self._held if kept(item)]
        return dropped

    def problem(self) -> str:
        """Why the member is not ready (what to fix), or empty while nothing is held."""
        if not self._held or self._first is None:
            return ""
        return (f"the mapping rejected {self._threshold - 1 + len(self._held)} events in a row the same way "
                f"({describe(self._first)}), with none mapped in between: {len(self._held)} held uncommitted, "
                "not dead-lettered. Every event failing alike points to configuration (WIGZO_EVENT_MAP) or a "
                "producer change: fix it and restart, and the held events are read again; the next event that "
                "maps dead-letters them as bad data")


def describe(rejection: Rejection) -> str:
    return f"{rejection.error_class}" + (f" at {rejection.field}" if rejection.field else "")
