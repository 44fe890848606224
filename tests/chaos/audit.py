"""The audit every chaos scenario ends with, and the result row it reports.

Each produced message must end in exactly one outcome: delivered (the sandbox accepted every request the dry
run maps it to, recognised by Idempotency-Key), skipped (the dry run says Skip), or dead-lettered (a letter in
the dead-letter topic carries its partition and offset). Anything else is missing, and missing must be 0.
Requests the sandbox accepted more than once per Idempotency-Key are duplicates: counted and reported, allowed
where a crash makes them unavoidable.
"""

from __future__ import annotations

import os
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from pipeline.config import Settings
from pipeline.contract.decoder import EventDecoder
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.kafka.dead_letter_headers import error_headers
from pipeline.model import Deliver, Rejection, Secret, Skip
from pipeline.wigzo.mapping import MappingConfig, map_event
from tests.chaos.harness import API_TOKEN, ORG_TOKEN, Produced, Wigzo

DELIVER, SKIP, REJECT = "deliver", "skip", "reject"


@dataclass(frozen=True, slots=True)
class Expected:
    """What the dry run (the consumer's own decoder and mapping) says a message becomes."""

    verdict: str                 # DELIVER, SKIP or REJECT
    keys: tuple[str, ...] = ()   # the Idempotency-Keys of its requests, for DELIVER


def dry_run_settings(topic: str) -> Settings:
    """The settings the decoder and mapping of a pipeline run with the suite's defaults would use."""
    return Settings(topics=(topic,), wigzo_org_token=Secret(ORG_TOKEN), wigzo_api_token=Secret(API_TOKEN))


def expect(settings: Settings, topic: str, values: Iterable[bytes | None]) -> list[Expected]:
    decoder, mapping = EventDecoder(settings), MappingConfig.from_settings(settings)
    expected = []
    for value in values:
        event = decoder.decode(topic, value)
        decision: Deliver | Skip | Rejection = event if isinstance(event, Rejection) else map_event(event, mapping)
        if isinstance(decision, Deliver):
            expected.append(Expected(DELIVER, tuple(dict(r.headers)["Idempotency-Key"] for r in decision.requests)))
        else:
            expected.append(Expected(SKIP if isinstance(decision, Skip) else REJECT))
    return expected


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as the audit sees it: its context headers, and what the pipeline wrote."""

    context: dict[str, str]
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def source(self) -> tuple[int, int]:
        return int(self.context["partition"]), int(self.context["offset"])


def read_letters(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Letter]:
    """Every letter of the dead-letter topic, from the start to its end as of now (none if it does not exist)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-audit-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        positions = dict.fromkeys(ends, 0)
        letters: list[Letter] = []
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"could not read {topic} to its end within {timeout:.0f}s"
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    headers = list(message.headers() or [])
                    letters.append(Letter(error_headers(headers), message.value(), headers))
                    positions[message.partition()] = message.offset() + 1
        return letters
    finally:
        consumer.close()


@dataclass
class Audit:
    events: int
    delivered: int
    skipped: int
    dead_lettered: int
    missing: int
    duplicates: int               # extra acceptances of an Idempotency-Key
    retry_after_violations: int
    double_outcomes: int          # dead-lettered and also fully delivered
    letter_repeats: int           # extra dead letters for one message (a crash between write and commit)
    missing_examples: list[str] = field(default_factory=list)
    letters: dict[tuple[int, int], Letter] = field(default_factory=dict, repr=False)
    outcome_of: list[str] = field(default_factory=list, repr=False)  # per produced message, in produced order


def audit(bootstrap: str, topic: str, produced: Sequence[Produced], wigzo: Wigzo, *,
          letters: list[Letter] | None = None, settings: Settings | None = None) -> Audit:
    """Account for every produced message; `letters` when the dead-letter topic was read already, `settings` for
    the dry run when the members ran with other settings of the decoder or mapping than the suite's defaults."""
    expected = expect(settings or dry_run_settings(topic), topic, (p.value for p in produced))
    accepted = Counter(r["idempotency_key"] for r in wigzo.control.received())
    if letters is None:
        letters = read_letters(bootstrap, f"{topic}.dlq")
    by_source: dict[tuple[int, int], Letter] = {}
    repeats = 0
    for letter in letters:
        assert letter.context.get("topic") == topic, f"a dead letter from elsewhere: {letter.context}"
        repeats += letter.source in by_source
        by_source[letter.source] = letter
    outcomes: list[str] = []
    double = 0
    missing_examples: list[str] = []
    for message, expectation in zip(produced, expected, strict=True):
        delivered = expectation.verdict == DELIVER and all(accepted[key] for key in expectation.keys)
        if (message.partition, message.offset) in by_source:
            outcome = "dead_lettered"
            double += delivered
        elif expectation.verdict == SKIP:
            outcome = "skipped"
        elif delivered:
            outcome = "delivered"
        else:
            outcome = "missing"
            if len(missing_examples) < 5:
                missing_examples.append(f"{message.kind} at {message.partition}@{message.offset} "
                                        f"(expected {expectation.verdict} {expectation.keys[:2]})")
        outcomes.append(outcome)
    counts = Counter(outcomes)
    stats = wigzo.control.stats()
    return Audit(
        events=len(produced), delivered=counts["delivered"], skipped=counts["skipped"],
        dead_lettered=counts["dead_lettered"], missing=counts["missing"],
        duplicates=sum(n - 1 for n in wigzo.control.duplicates().values()),
        retry_after_violations=int(stats["retry_after_violations"]), double_outcomes=double,
        letter_repeats=repeats, missing_examples=missing_examples, letters=by_source, outcome_of=outcomes)


@dataclass
class ResultRow:
    """One line of the chaos report."""

    scenario: str
    events: int
    delivered: int
    skipped: int
    dead_lettered: int
    missing: int
    duplicates: int
    retry_after_violations: int
    recovery_s: float | None
    conditions: str
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, scenario: str, result: Audit | None, recovery_s: float | None, conditions: str,
           **details: Any) -> ResultRow:
        if result is None:  # the run never got to read anything (e.g. an unreachable broker)
            return cls(scenario, 0, 0, 0, 0, 0, 0, 0, recovery_s, conditions, details)
        details = {"double_outcomes": result.double_outcomes, "dead_letter_repeats": result.letter_repeats,
                   **details}
        return cls(scenario, result.events, result.delivered, result.skipped, result.dead_lettered, result.missing,
                   result.duplicates, result.retry_after_violations, recovery_s, conditions, details)


COLUMNS = ("scenario", "events", "delivered", "skipped", "dead_lettered", "missing", "duplicates",
           "retry_after_violations", "recovery_s")


def report(*rows: ResultRow) -> None:
    """Print the rows (pytest -s shows them) and append them as JSON lines to $CHAOS_REPORT when it is set."""
    print()
    print(" | ".join(COLUMNS))
    for row in rows:
        values = asdict(row)
        recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.1f}"
        print(" | ".join([*(str(values[c]) for c in COLUMNS[:-1]), recovery]))
        print(f"    conditions: {row.conditions}; {row.details}")
    if path := os.environ.get("CHAOS_REPORT"):
        with open(path, "ab") as out:
            for row in rows:
                out.write(orjson.dumps(asdict(row)) + b"\n")


def accepted_times(wigzo: Wigzo) -> list[float]:
    """When the sandbox accepted each request (epoch seconds, this process's clock), in order."""
    return sorted(r["received_at"] for r in wigzo.control.received())


def rate(times: Sequence[float], start: float, end: float) -> float:
    """Accepted requests per second in [start, end)."""
    return (bisect_left(times, end) - bisect_left(times, start)) / (end - start)


def recovery(times: Sequence[float], cleared_at: float, target: float, window: float = 2.0,
             horizon: float = 30.0, step: float = 0.1) -> float | None:
    """Seconds from `cleared_at` to the end of the first `window` whose throughput reached `target`; None if
    none did within `horizon`."""
    offset = 0.0
    while offset <= horizon:
        if rate(times, cleared_at + offset, cleared_at + offset + window) >= target:
            return round(offset + window, 1)
        offset += step
    return None


def deliverable(topic: str, seed: int, users: int = 50) -> Iterator[SampleMessage]:
    """Endless sample events that the dry run maps to exactly one request: throughput is then counted in
    messages, and a run of them has nothing to dead-letter or skip."""
    stream = SampleStream(seed=seed, users=users)
    settings = dry_run_settings(topic)
    while True:
        chunk = list(stream.messages(2000))
        for sample, verdict in zip(chunk, expect(settings, topic, (s.value for s in chunk)), strict=True):
            if verdict.verdict == DELIVER and len(verdict.keys) == 1:
                yield sample
