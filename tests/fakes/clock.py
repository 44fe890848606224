"""A clock for tests: it takes no real time."""

from __future__ import annotations


class SimulatedClock:
    """A monotonic clock that moves only when the test (or a fake wait) moves it, by setting `now`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
