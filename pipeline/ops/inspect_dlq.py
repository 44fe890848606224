"""`wigzo-pipeline dlq summary|show`: what is in the dead-letter topic, without changing anything.

It names topics as `run` does: the source topics with --topics (KAFKA_TOPICS), whose dead letters it reads, or
the dead-letter topic itself with --dlq-topic (DLQ_TOPIC). It reads from the start of each partition to its end
as of now under manual assignment, in no consumer group and committing nothing, so it can run while the pipeline
runs and never moves redrive's cursor. Dead letters carry original payloads, which may hold anything: every line
printed goes through the Scrubber with the configured tokens (and Kafka credentials).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from pipeline.config import Settings, add_options, load_settings
from pipeline.kafka.admin import (
    KafkaErrors,
    KafkaUnreachable,
    TopicNotFound,
    cluster_metadata,
    explain,
    partitions_in,
)
from pipeline.kafka.dead_letter_headers import HEADER_PREFIX, error_headers
from pipeline.model import STAGES, PipelineError, Scrubber
from pipeline.ops.lookups import LOOKUP_TIMEOUT, lookup_offsets, parse_time, watermarks
from pipeline.telemetry.logs import configure_for, with_kafka_logging

PREVIEW_CHARS = 200
STALL_SECONDS = 30.0  # no progress for this long while letters remain: give up rather than hang
SOURCE_HEADERS = ("topic", "partition", "offset")  # shown together as the letter's source coordinates


class DeadLetterReader:
    """The letters of one topic as of now; a consumer outside any group that commits nothing."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._errors = KafkaErrors()
        # log_level 0: why the broker is unreachable comes through error_cb into one message, not stderr noise
        self._consumer = Consumer(with_kafka_logging({
            "log_level": 0, **settings.kafka_client_config(), "group.id": f"{settings.group_id}.dlq-inspect",
            "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "error_cb": self._errors}))
        try:
            self.ends = self._ranges(settings)
        except BaseException:
            self._consumer.close()
            raise

    def _ranges(self, settings: Settings) -> dict[int, tuple[int, int]]:
        try:
            metadata = cluster_metadata(self._consumer, self._errors, LOOKUP_TIMEOUT, topic=self.topic)
            partitions = partitions_in(metadata, self.topic)
            return watermarks(lookup_offsets(settings), self.topic, partitions)
        except TopicNotFound:
            raise PipelineError(f"dead-letter topic {self.topic!r} does not exist: either nothing was dead-lettered "
                                "yet, or it has another name; name the source topics with --topics (KAFKA_TOPICS), "
                                "or the dead-letter topic itself with --dlq-topic (DLQ_TOPIC)") from None
        except KafkaUnreachable as exc:
            reason, fix = exc.reason, exc.fix
        except KafkaException as exc:  # the broker went away between the two questions
            reason, fix = exc.args[0], explain(exc.args[0]).fix
        raise PipelineError(f"cannot read {self.topic!r} from Kafka at {settings.bootstrap_servers} "
                            f"({reason.str()}); {fix}")

    def letters(self) -> Iterator[Message]:
        """Every letter from the low to the high watermark each partition had when this reader started."""
        remaining = {p: high for p, (low, high) in self.ends.items() if high > low}
        self._consumer.assign([TopicPartition(self.topic, p, self.ends[p][0]) for p in remaining])
        progressed, last_error = time.monotonic(), ""
        while remaining:
            for message in self._consumer.consume(500, timeout=0.5):
                partition, error = message.partition(), message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:  # also ends a partition whose tail is markers
                        remaining.pop(partition, None)
                    else:
                        last_error = error.str()
                    continue
                if partition not in remaining or message.offset() >= remaining[partition]:
                    continue  # written after we started
                progressed = time.monotonic()
                yield message
                if message.offset() + 1 >= remaining[partition]:
                    del remaining[partition]
            if remaining and time.monotonic() - progressed > STALL_SECONDS:
                raise PipelineError(f"reading {self.topic!r} made no progress for {STALL_SECONDS:g}s "
                                    f"({last_error or 'no error reported'}); check the broker and retry")

    def close(self) -> None:
        self._consumer.close()


def preview(data: bytes | None, scrub: Callable[[str], str], limit: int = PREVIEW_CHARS) -> str:
    """The start of a key or payload as one printable line: invalid UTF-8 as \\xNN, control characters escaped.
    Scrubbed before it is cut, so a secret straddling the cut cannot leak its first half."""
    if data is None:
        return "(none)"
    text = scrub(data.decode("utf-8", "backslashreplace"))
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text[:limit])
    return f"{shown}{'…' if len(text) > limit else ''} ({len(data)} bytes)"


def _table(title: str, counts: Counter[str], emit: Callable[[str], None], order: list[str] | None = None) -> None:
    keys = order if order is not None else [key for key, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    emit(f"\nby {title}")
    if not keys:
        emit("  (none)")
    width = max([len(key) for key in keys] + [12])
    for key in keys:
        emit(f"  {key:<{width}}  {counts[key]:>8,}")


def _moment(stamp: str | None) -> tuple[int, str] | None:
    """A failure-time header as (epoch ms, as written); None when absent or not a time (written by hand)."""
    try:
        return (parse_time(stamp), stamp) if stamp else None
    except PipelineError:
        return None


def summarize(reader: DeadLetterReader, emit: Callable[[str], None]) -> None:
    stages: Counter[str] = Counter()
    destinations: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    sources: Counter[tuple[str, str]] = Counter()
    oldest: tuple[int, str] | None = None
    newest: tuple[int, str] | None = None
    total = without_context = 0
    for letter in reader.letters():
        total += 1
        context = error_headers(letter.headers())
        if not context:
            without_context += 1
            continue
        stages[context.get("stage", "?")] += 1
        destinations[context.get("destination") or "(none: written before destinations)"] += 1
        classes[context.get("class", "?")] += 1
        statuses[context.get("http.status") or "none (no HTTP answer)"] += 1
        sources[(context.get("topic", "?"), context.get("partition", "?"))] += 1
        if (first := _moment(context.get("first.failure"))) and (oldest is None or first < oldest):
            oldest = first
        if (last := _moment(context.get("last.failure"))) and (newest is None or last > newest):
            newest = last
    emit(f"dead-letter topic {reader.topic}: {total:,} letter(s) in {len(reader.ends)} partition(s), read to its "
         "end as of now")
    if without_context:
        emit(f"  {without_context:,} of them have no {HEADER_PREFIX}* headers (not written by this pipeline)")
    _table("stage", stages, emit, order=[*STAGES, *sorted(set(stages) - set(STAGES))])
    _table("destination", destinations, emit)
    _table("error class", classes, emit)
    _table("HTTP status", statuses, emit)
    emit("\nfailure times")
    emit(f"  oldest first failure  {oldest[1] if oldest else '-'}")
    emit(f"  newest last failure   {newest[1] if newest else '-'}")
    emit("\nby source topic and partition")
    width = max([len(topic) for topic, _ in sources] + [5])
    emit(f"  {'topic':<{width}}  {'partition':>9}  {'letters':>8}")
    for (topic, partition), count in sorted(sources.items(),
                                            key=lambda item: (item[0][0], int(item[0][1]) if item[0][1].isdigit()
                                                              else -1)):
        emit(f"  {topic:<{width}}  {partition:>9}  {count:>8,}")


def show(reader: DeadLetterReader, emit: Callable[[str], None], scrub: Callable[[str], str], *,
         stage: str | None, error_class: str | None, limit: int) -> None:
    shown = read = 0
    for letter in reader.letters():
        read += 1
        context = error_headers(letter.headers())
        if (stage and context.get("stage") != stage) or (error_class and context.get("class") != error_class):
            continue
        shown += 1
        emit(f"\n── {reader.topic} partition {letter.partition()}, offset {letter.offset()}")
        if context:
            emit(f"  {'source':<16} {context.get('topic', '?')} partition {context.get('partition', '?')}, "
                 f"offset {context.get('offset', '?')}")
        else:
            emit(f"  (no {HEADER_PREFIX}* headers: not written by this pipeline)")
        for name, value in context.items():
            if name in SOURCE_HEADERS:
                continue
            lines = value.splitlines() or [""]
            emit(f"  {name:<16} {lines[0]}")
            for line in lines[1:]:
                emit(f"  {'':<16} {line}")
        emit(f"  {'key':<16} {preview(letter.key(), scrub)}")
        emit(f"  {'payload':<16} {preview(letter.value(), scrub)}")
        if shown >= limit:
            emit(f"\n{shown} letter(s) shown; stopped at --limit {limit} after reading {read:,}")
            return
    emit(f"\n{shown} matching letter(s) of {read:,} read" if shown else f"no letter matches ({read:,} read)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    summary = actions.add_parser("summary", help="count the dead letters by stage, error class, HTTP status, "
                                                 "failure time and source partition")
    detail = actions.add_parser("show", help="print dead letters with their context headers and a payload preview")
    for sub in (summary, detail):
        add_options(sub, {"bootstrap_servers", "topics", "group_id", "dlq_topic", "wigzo_org_token",
                          "wigzo_api_token", "kafka_config"})
        # once the dead-letter topic, while `replay` and `produce-sample` take a source topic by that name
        sub.add_argument("--topic", dest="ambiguous_topic", help=argparse.SUPPRESS)
    detail.add_argument("--stage", choices=STAGES, help="only letters of this stage")
    detail.add_argument("--error-class", help=f"only letters whose {HEADER_PREFIX}class is this")
    detail.add_argument("--limit", type=_positive_int, default=20, metavar="N",
                        help="show at most N letters of each dead-letter topic (default 20)")


def refuse_ambiguous_topic(topic: str) -> None:
    """`--topic` named the dead-letter topic here and a source topic elsewhere: say which option means which."""
    raise PipelineError(f"--topic is ambiguous: to read the dead letters of source topic {topic!r} type "
                        f"--topics {topic} (they are in {topic}.dlq unless DLQ_TOPIC says otherwise); if {topic!r} "
                        f"is the dead-letter topic itself, type --dlq-topic {topic}")


def main(args: argparse.Namespace) -> int:
    if args.ambiguous_topic is not None:
        refuse_ambiguous_topic(args.ambiguous_topic)
    settings = load_settings(args)
    configure_for(settings)
    scrub = Scrubber(settings.secrets())

    def emit(line: str) -> None:
        print(scrub(line))

    for number, topic in enumerate(settings.dead_letter_topics()):
        if number:
            emit("")
        with closing(DeadLetterReader(settings, topic)) as reader:
            if args.action == "summary":
                summarize(reader, emit)
            else:
                show(reader, emit, scrub, stage=args.stage, error_class=args.error_class, limit=args.limit)
    return 0
