"""Fakes shared by more than one test module: stand-ins that take no real time and touch no network. A fake
used by one module stays in that module; it moves here when a second module needs it."""

from __future__ import annotations


class SimulatedClock:
    """A monotonic clock that moves only when the test (or a fake wait) moves it, by setting `now`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
