"""What operator commands ask Kafka before they act (partitions, watermarks, offsets by time), how they
parse times, and how they run and report an offset range through the pipeline."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Message

from pipeline.config import Settings
from pipeline.kafka.admin import BrokerOffsets
from pipeline.kafka.assignment import OffsetRanges
from pipeline.kafka.ledger import PartitionKey
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.runner import build_pipeline, run_pipeline
from pipeline.model import PipelineError, Skip

Ranges = dict[PartitionKey, tuple[int, int]]
LOOKUP_TIMEOUT = 10.0  # seconds for each question to the broker


def parse_time(text: str) -> int:
    """ISO-8601 (naive means UTC) to epoch milliseconds, as Kafka timestamps are."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PipelineError(f"{text!r} is not an ISO time; write it like 2026-11-29T18:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def lookup_offsets(settings: Settings, group: str | None = None) -> BrokerOffsets:
    """Partitions, watermarks and the committed offsets of `group` (default: the live group), asked over an
    admin connection: nothing subscribes or commits."""
    return BrokerOffsets(settings.kafka_client_config(), group or settings.group_id, LOOKUP_TIMEOUT)


def watermarks(offsets: BrokerOffsets, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) offsets per partition of one topic."""
    marks = offsets.watermarks((topic, p) for p in partitions)
    return {p: marks[(topic, p)] for p in partitions}


def offsets_at(offsets: BrokerOffsets, topic: str, partitions: list[int], epoch_ms: int) -> dict[int, int]:
    """First offset at or after the time per partition of one topic; the end of the partition if there is none."""
    found = offsets.offsets_at(((topic, p) for p in partitions), epoch_ms)
    return {p: found[(topic, p)] for p in partitions}


def print_ranges(ranges: Ranges) -> None:
    print(f"{'topic':<30} {'partition':>9} {'from':>10} {'to':>10} {'messages':>9}")
    for (topic, partition), (start, end) in sorted(ranges.items()):
        print(f"{topic:<30} {partition:>9} {start:>10} {end:>10} {end - start:>9}")
    print(f"{'total':<30} {'':>9} {'':>10} {'':>10} {sum(e - s for s, e in ranges.values()):>9}")


class Progress:
    """A one-line progress bar on stderr with events/s and ETA; silent when stderr is not a terminal
    except for a line every few seconds, so logs stay readable."""

    def __init__(self, total: int, read: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._total, self._read, self._clock = total, read, clock
        self._started = self._last = clock()
        self._interval = 0.5 if sys.stderr.isatty() else 5.0

    def tick(self) -> None:
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self.show(end="\r" if sys.stderr.isatty() else "\n")

    def show(self, end: str = "\n") -> None:
        done, elapsed = self._read(), max(self._clock() - self._started, 1e-9)
        rate = done / elapsed
        eta = (self._total - done) / rate if rate else float("inf")
        width = 30
        filled = int(width * done / self._total) if self._total else width
        print(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self._total}  {rate:,.0f} ev/s  "
              f"ETA {eta:,.0f}s   ", end=end, file=sys.stderr, flush=True)


def run_range(settings: Settings, ranges: Ranges, group_id: str, *, commit: bool,
              reader: Callable[[Message], Message | Skip] | None = None) -> Pipeline:
    """Process [start, end) of each partition under manual assignment, with a progress line."""
    pipeline = build_pipeline(settings, OffsetRanges(ranges), reader=reader, commit=commit)
    status = pipeline.status
    progress = Progress(sum(end - start for start, end in ranges.values()), lambda: status.stats.read)

    def done() -> bool:
        progress.tick()
        return status.finished() or status.stuck()

    try:
        run_pipeline(pipeline, settings, group_id=group_id, stop_when=done)
    finally:
        progress.show()
    return pipeline


def report(title: str, pipeline: Pipeline) -> int:
    """Print what the run did; the exit code: 1 when events were left held by a mapping streak."""
    stats = pipeline.status.stats
    print(f"\n{title}: read {stats.read} messages")
    print(pipeline.status.outcomes.report())
    if stats.aborted:
        print(f"interrupted before finishing: {stats.aborted} (not committed; run again to finish)")
    if stats.held:
        print(f"not finished: {stats.held} events left uncommitted because {stats.held_because}",
              file=sys.stderr)
        return 1
    return 0
