"""The one place where every message's final outcome is counted.

Every message read from Kafka ends as exactly one of: delivered, skipped (with a reason) or
dead-lettered (with its stage). The consumer, replay, redrive and the demo report from here, and
metrics read from here, so the numbers can never disagree.
"""

from __future__ import annotations

import threading
from collections import Counter

from pipeline.model import Outcome


class OutcomeCounter:
    """Thread-safe tally of outcomes, each with a detail (skip reason, or dead-letter stage)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[Outcome, str]] = Counter()

    def record(self, outcome: Outcome, detail: str = "") -> None:
        with self._lock:
            self._counts[(outcome, detail)] += 1

    def by_detail(self) -> dict[tuple[Outcome, str], int]:
        with self._lock:
            return dict(self._counts)

    def totals(self) -> dict[Outcome, int]:
        totals = {outcome: 0 for outcome in Outcome}
        for (outcome, _), count in self.by_detail().items():
            totals[outcome] += count
        return totals

    def total(self) -> int:
        return sum(self.totals().values())

    def report(self) -> str:
        """A readable table: one line per outcome, then its details indented."""
        lines = []
        details = self.by_detail()
        for outcome, count in self.totals().items():
            lines.append(f"{outcome.value:<14} {count:>8}")
            for (kind, detail), n in sorted(details.items(), key=lambda item: -item[1]):
                if kind is outcome and detail:
                    lines.append(f"    {detail[:60]:<60} {n:>8}")
        lines.append(f"{'total':<14} {self.total():>8}")
        return "\n".join(lines)
