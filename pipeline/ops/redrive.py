"""`wigzo-pipeline redrive`: reprocess dead letters through the current code and configuration.

It reads the dead-letter topic of each source topic (--topics, KAFKA_TOPICS; or the one --dlq-topic, DLQ_TOPIC,
names) under manual assignment up to its end as of now, and keeps its own cursor in the group `<group>.redrive`,
so a second redrive does not send the same dead letters again.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from confluent_kafka import Message

from pipeline.config import Settings, add_options, load_settings
from pipeline.kafka.dead_letter_headers import HEADER_PREFIX, error_headers
from pipeline.model import STAGES, PipelineError, Skip
from pipeline.ops.lookups import (
    Ranges,
    lookup_offsets,
    parse_time,
    print_ranges,
    report,
    run_range,
    watermarks,
)
from pipeline.telemetry.logs import configure_for


def as_original(letter: Message, context: dict[str, str]) -> Message:
    """The dead letter seen as the message it was: original topic, partition and offset; its headers (with the
    earlier failure context, which the next dead letter accumulates) unchanged."""
    return Message(topic=context.get("topic", ""), partition=int(context.get("partition", "-1")),
                   offset=int(context.get("offset", "-1")), key=letter.key(), value=letter.value(),
                   headers=letter.headers(), timestamp=letter.timestamp())


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    stage: str | None = None
    error_class: str | None = None
    failed_since_ms: int | None = None
    failed_until_ms: int | None = None

    def __call__(self, message: Message) -> Message | Skip:
        context = error_headers(message.headers())
        if not context:
            return Skip("not a dead letter (no __wigzo.errors headers)")
        if self.stage and context.get("stage") != self.stage:
            return Skip("redrive filter: other stage")
        if self.error_class and context.get("class") != self.error_class:
            return Skip("redrive filter: other error class")
        if self.failed_since_ms or self.failed_until_ms:
            failed_at = parse_time(context.get("last.failure", "1970-01-01T00:00:00Z"))
            if self.failed_since_ms and failed_at < self.failed_since_ms:
                return Skip("redrive filter: failed earlier")
            if self.failed_until_ms and failed_at >= self.failed_until_ms:
                return Skip("redrive filter: failed later")
        return as_original(message, context)


def redrive_ranges(settings: Settings, dlq_topic: str, group: str) -> Ranges:
    """From the redrive group's cursor (or the start) to the end as of now: letters that fail again are
    appended after that end, so one redrive never loops on its own output."""
    lookup = lookup_offsets(settings, group)
    partitions = lookup.partitions(dlq_topic)
    committed = lookup.committed((dlq_topic, p) for p in partitions)
    marks = watermarks(lookup, dlq_topic, partitions)
    ranges = {}
    for (topic, partition), offset in committed.items():
        low, high = marks[partition]
        start = offset if offset >= 0 else low
        ranges[(topic, partition)] = (max(start, low), high)
    return ranges


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--from-topic", dest="from_topic", help=argparse.SUPPRESS)  # the old name of --dlq-topic
    parser.add_argument("--stage", choices=STAGES, help="only dead letters of this stage")
    parser.add_argument("--error-class", help=f"only dead letters whose {HEADER_PREFIX}class is this")
    parser.add_argument("--failed-since", metavar="ISO_TIME", help="only dead letters that last failed since")
    parser.add_argument("--failed-until", metavar="ISO_TIME", help="...and before this time")
    parser.add_argument("--redrive-group", metavar="GROUP",
                        help="consumer group that remembers how far redrive got (default '<group>.redrive'); "
                             "a new name re-reads the whole dead-letter topic")


def take_old_topic_name(args: argparse.Namespace) -> None:
    """`--from-topic` named the dead-letter topic to read, as `--dlq-topic` does: it stays a spelling of that."""
    if args.from_topic is None:
        return
    if args.dlq_topic is not None and args.dlq_topic != args.from_topic:
        raise PipelineError(f"--from-topic is the old name of --dlq-topic, and they disagree ({args.from_topic!r} "
                            f"vs {args.dlq_topic!r}): give the dead-letter topic once, as --dlq-topic")
    args.dlq_topic = args.from_topic


def main(args: argparse.Namespace) -> int:
    take_old_topic_name(args)
    settings = load_settings(args)
    configure_for(settings)
    dlq_topics = settings.dead_letter_topics()
    group = args.redrive_group or f"{settings.group_id}.redrive"
    select = RedriveFilter(args.stage, args.error_class,
                           parse_time(args.failed_since) if args.failed_since else None,
                           parse_time(args.failed_until) if args.failed_until else None)
    ranges = {key: span for topic in dlq_topics for key, span in redrive_ranges(settings, topic, group).items()}
    print_ranges(ranges)
    pipeline = run_range(settings, ranges, group, commit=True, reader=select)
    return report(f"redrive of {', '.join(dlq_topics)} finished", pipeline)
