"""Step 5 of the loop: every message's outcome made durable and counted, and the commits that follow.

Every message read from Kafka ends as exactly one of: delivered, skipped (with a reason) or dead-lettered
(with its stage), and is counted here once its outcome is durable. Delivery results come back from the
worker threads on a queue, dead-letter acknowledgements from the writer's `poll`; `Settlement` takes both in
on the polling thread, so nothing of Kafka's or a worker's calls into the loop. The consumer, replay, redrive
and the demo report from `OutcomeCounter`, and metrics count the same events, so the numbers never disagree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from queue import Empty, SimpleQueue

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.kafka.ledger import PartitionKey, PartitionLedger, Pending
from pipeline.kafka.parts import DeadLetterSink
from pipeline.kafka.watch import KafkaWatch
from pipeline.model import DeadLetter, Delivered, DeliveryFailed, DeliveryResult, Outcome, Rejection
from pipeline.telemetry import metrics

log = logging.getLogger(__name__)


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


@dataclass
class RunStats:
    read: int = 0
    aborted: int = 0  # stopped before an outcome was known: uncommitted, redone by the next owner
    duplicate_risk: int = 0  # delivered after its partition was released: the next owner may send it again
    held: int = 0  # held (a mapping streak, the registry) when their partition was released: uncommitted, read again
    held_because: str = ""  # why they were held, as it was then


class Settlement:
    """Outcomes and commits, used from the polling thread only."""

    def __init__(self, ledger: PartitionLedger, dead_letters: DeadLetterSink, watch: KafkaWatch,
                 outcomes: OutcomeCounter, stats: RunStats, destination_of: Callable[[str], str], *, commit: bool,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """`destination_of` names the destination of a topic's messages, for the metrics."""
        self._ledger = ledger
        self._destination_of = destination_of
        self._dead_letters = dead_letters
        self._watch = watch
        self._outcomes = outcomes
        self._stats = stats
        self._commit_enabled = commit
        self._wall_clock = wall_clock
        self._commits_failing = False
        self.results: SimpleQueue[tuple[Pending, DeliveryResult]] = SimpleQueue()  # from the worker threads

    def finish(self, pending: Pending, outcome: Outcome, detail: str = "") -> None:
        self._outcomes.record(outcome, detail)
        destination = self._destination_of(pending.record.topic() or "")  # a redriven letter's: its source's
        if outcome is Outcome.SKIPPED:
            metrics.SKIPS.labels(detail, destination).inc()
        metrics.OUTCOMES.labels(outcome.value, detail if outcome is Outcome.DEAD_LETTERED else "", destination).inc()
        pending.partition.finish(pending)

    def dead_letter(self, pending: Pending, letter: DeadLetter) -> None:
        """Finished once the dead-letter topic acknowledged it (a later `settle`)."""
        self._dead_letters.write(pending.record, letter, (pending, letter.rejection.stage))

    def first_failure(self, rejection: Rejection) -> DeadLetter:
        now = self._wall_clock()
        return DeadLetter(rejection, attempts=1, first_failure=now, last_failure=now)

    def settle(self) -> None:
        """Take in what finished: delivery results from the workers, acknowledged dead letters."""
        while True:
            try:
                pending, result = self.results.get_nowait()
            except Empty:
                break
            pending.partition.returned(pending, self._ledger.key_share)
            if isinstance(result, Delivered):
                if pending.partition.released:
                    self._stats.duplicate_risk += 1
                self.finish(pending, Outcome.DELIVERED)
            elif isinstance(result, DeliveryFailed):
                if not pending.partition.released:
                    self.dead_letter(pending, result)
            else:
                self._stats.aborted += 1  # stays unfinished, so uncommitted: whoever owns it next redoes it
        for pending, stage in self._dead_letters.poll():
            self.finish(pending, Outcome.DEAD_LETTERED, stage)

    def raise_if_dead_letters_fail(self) -> None:
        if self._dead_letters.failure is not None:
            raise self._dead_letters.failure

    def commit(self, consumer: Consumer, keys: Iterable[PartitionKey], *, wait: bool = False) -> None:
        """Commit each partition's position where it moved. Asynchronous, so a hung broker cannot hold the loop:
        the broker's answer comes back through `commit_answered` (librdkafka's on_commit, served inside
        `consume`). `wait` commits synchronously, for a release: the partition is about to go. A failed commit
        is retried with the next one."""
        if not self._commit_enabled:
            return
        self.raise_if_dead_letters_fail()
        if not (due := self._ledger.due(keys)):
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in due.items()]
        if not wait:
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:  # refused before sending (e.g. during a rebalance): due again next time
                self._commit_failed(exc.args[0])
                return
            self._ledger.committing(due)
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(exc.args[0])
            return
        self._ledger.committed(due)
        self._commit_succeeded()

    def commit_answered(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's on_commit callback: which positions the broker took."""
        failed = error
        for tp in partitions:
            failed = failed or tp.error
            self._ledger.commit_answered((tp.topic, tp.partition), tp.offset, ok=error is None and tp.error is None)
        if failed is None:
            self._commit_succeeded()
        else:
            self._commit_failed(failed)

    def _commit_failed(self, error: KafkaError) -> None:
        if not self._commits_failing:
            self._commits_failing = True
            log.warning("commit failed (%s); retrying with the next commit", error.str())

    def _commit_succeeded(self) -> None:
        if self._commits_failing:
            self._commits_failing = False
            log.info("commits succeed again")
        self._watch.reached()

    def flush(self, timeout: float) -> bool:
        """Wait for every dead letter written to be acknowledged, then take the acknowledgements in."""
        durable = self._dead_letters.flush(timeout)
        self.settle()
        return durable
