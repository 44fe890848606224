"""Operations after an incident: replay a range, move the live group's offsets, redrive dead letters.

Replay and redrive run the same `Pipeline` as `run`, under manual assignment, so the live consumer
group is never touched: replay commits nothing, and redrive keeps its own cursor in the group
`<group>.redrive` so a second redrive does not send the same dead letters again.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings, add_options, load_settings
from pipeline.kafka.dead_letters import HEADER_PREFIX, error_headers
from pipeline.kafka.pipeline import (
    PartitionKey,
    Pipeline,
    configure_logging,
    install_signal_handlers,
)
from pipeline.model import STAGES, PipelineError, Skip

Ranges = dict[PartitionKey, tuple[int, int]]


def parse_time(text: str) -> int:
    """ISO-8601 (naive means UTC) to epoch milliseconds, as Kafka timestamps are."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PipelineError(f"{text!r} is not an ISO time; write it like 2026-11-29T18:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_offset_ranges(text: str) -> dict[int, tuple[int, int]]:
    """`0:100-200,3:5-9` -> {0: (100, 200), 3: (5, 9)}; the end offset is exclusive."""
    ranges = {}
    for item in text.split(","):
        try:
            partition, span = item.split(":")
            start, end = span.split("-")
            ranges[int(partition)] = (int(start), int(end))
        except ValueError:
            raise PipelineError(f"--offsets item {item!r} is invalid: write PARTITION:START-END, "
                                "e.g. 0:100-200,1:0-50 (END exclusive)") from None
    return ranges


def _lookup_consumer(settings: Settings, group: str | None = None) -> Consumer:
    """A consumer for metadata, watermarks and committed offsets; it never subscribes or commits."""
    return Consumer({**settings.kafka_client_config(), "group.id": group or f"{settings.group_id}.lookup",
                     "enable.auto.commit": False})


def _watermarks(consumer: Consumer, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) offsets per partition."""
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise PipelineError(f"topic {topic!r} does not exist; check the name (and KAFKA_BOOTSTRAP_SERVERS)")
    return sorted(metadata.partitions)


def _offsets_at(consumer: Consumer, topic: str, partitions: list[int], epoch_ms: int) -> dict[int, int]:
    """First offset at or after the time per partition; the end of the partition if there is none."""
    found = consumer.offsets_for_times([TopicPartition(topic, p, epoch_ms) for p in partitions], timeout=10)
    past_the_end = [tp.partition for tp in found if tp.offset < 0]
    ends = {p: high for p, (_, high) in _watermarks(consumer, topic, past_the_end).items()}
    return {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition] for tp in found}


def resolve_ranges(settings: Settings, topic: str, *, since: str | None, until: str | None,
                   offsets: str | None) -> Ranges:
    consumer = _lookup_consumer(settings)
    try:
        partitions = _partitions(consumer, topic)
        watermarks = _watermarks(consumer, topic, partitions)
        if offsets:
            explicit = parse_offset_ranges(offsets)
            unknown = set(explicit) - set(partitions)
            if unknown:
                raise PipelineError(f"{topic!r} has no partition {sorted(unknown)}; it has {partitions}")
            return {(topic, p): (max(start, watermarks[p][0]), min(end, watermarks[p][1]))
                    for p, (start, end) in explicit.items()}
        starts = _offsets_at(consumer, topic, partitions, parse_time(since)) if since else \
            {p: low for p, (low, _) in watermarks.items()}
        ends = _offsets_at(consumer, topic, partitions, parse_time(until)) if until else \
            {p: high for p, (_, high) in watermarks.items()}
        return {(topic, p): (starts[p], max(starts[p], ends[p])) for p in partitions}
    finally:
        consumer.close()


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
               select: Callable[[Message], Message | Skip] | None = None) -> Pipeline:
    pipeline = Pipeline(settings, commit=commit, select=select)
    consumer = Consumer(pipeline.consumer_config(group_id))
    install_signal_handlers(pipeline)
    pipeline.assign_range(consumer, ranges)
    progress = Progress(sum(end - start for start, end in ranges.values()), lambda: pipeline.stats.read)

    def done() -> bool:
        progress.tick()
        return pipeline.range_done()

    try:
        pipeline.run(consumer, stop_when=done)
    finally:
        progress.show()
        consumer.close()
    return pipeline


def _report(title: str, pipeline: Pipeline) -> None:
    print(f"\n{title}: read {pipeline.stats.read} messages")
    print(pipeline.outcomes.report())
    if pipeline.stats.aborted:
        print(f"interrupted before finishing: {pipeline.stats.aborted} (not committed; run again to finish)")


# ---- replay ------------------------------------------------------------------------------------

def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--topic", help="topic to replay (default: the first of KAFKA_TOPICS)")
    parser.add_argument("--from", dest="since", metavar="ISO_TIME", help="replay messages from this time")
    parser.add_argument("--to", dest="until", metavar="ISO_TIME", help="...up to (excluding) this time")
    parser.add_argument("--offsets", metavar="P:START-END,...",
                        help="replay these offsets instead (END exclusive), e.g. 0:100-200,3:0-50")
    parser.add_argument("--dry-run", action="store_true", help="print what would be replayed, per partition")


def replay_main(args: argparse.Namespace) -> int:
    configure_logging()
    settings = load_settings(args)
    if args.offsets and (args.since or args.until):
        raise PipelineError("choose either --offsets or --from/--to, not both")
    if not (args.offsets or args.since):
        raise PipelineError("say what to replay: --from ISO_TIME [--to ISO_TIME], or --offsets P:START-END")
    topic = args.topic or settings.topics[0]
    ranges = resolve_ranges(settings, topic, since=args.since, until=args.until, offsets=args.offsets)
    print_ranges(ranges)
    if args.dry_run:
        return 0
    pipeline = run_range(settings, ranges, f"{settings.group_id}.replay-{int(time.time())}", commit=False)
    _report("replay finished", pipeline)
    return 0


# ---- reset-offsets -----------------------------------------------------------------------------

def add_reset_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, {"bootstrap_servers", "topics", "group_id", "kafka_config"})
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-datetime", metavar="ISO_TIME", help="the first offset at or after this time")
    target.add_argument("--to-offset", type=int, metavar="N", help="this offset in every partition")
    target.add_argument("--to-earliest", action="store_true", help="the start of each partition")
    target.add_argument("--to-latest", action="store_true", help="the end of each partition (skip the backlog)")
    parser.add_argument("--dry-run", action="store_true", help="show the before/after table, change nothing")


def reset_main(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    admin = AdminClient(settings.kafka_client_config())
    group = settings.group_id
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    if description.members:
        raise PipelineError(f"group {group!r} has {len(description.members)} active member(s); stop every "
                            "`wigzo-pipeline run` of this group first, then reset")
    consumer = _lookup_consumer(settings)
    try:
        rows = []
        for topic in settings.topics:
            partitions = _partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in partitions]
            before = _committed(admin, group, tps)
            watermarks = _watermarks(consumer, topic, partitions)
            if args.to_datetime:
                after = _offsets_at(consumer, topic, partitions, parse_time(args.to_datetime))
            elif args.to_offset is not None:
                after = {p: min(max(args.to_offset, low), high) for p, (low, high) in watermarks.items()}
            elif args.to_earliest:
                after = {p: low for p, (low, _) in watermarks.items()}
            else:
                after = {p: high for p, (_, high) in watermarks.items()}
            rows += [(topic, p, before.get(p), after[p]) for p in partitions]
    finally:
        consumer.close()
    print(f"group {group}")
    print(f"{'topic':<30} {'partition':>9} {'before':>10} {'after':>10}")
    for topic, partition, before_offset, after_offset in rows:
        shown = "-" if before_offset is None else str(before_offset)
        print(f"{topic:<30} {partition:>9} {shown:>10} {after_offset:>10}")
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for t, p, _, o in rows])
    admin.alter_consumer_group_offsets([request])[group].result(timeout=15)
    print("offsets moved")
    return 0


def _committed(admin: AdminClient, group: str, tps: list[TopicPartition]) -> dict[int, int | None]:
    request = ConsumerGroupTopicPartitions(group, tps)
    answer = admin.list_consumer_group_offsets([request])[group].result(timeout=15)
    return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer.topic_partitions}


# ---- redrive -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """A dead letter seen as the message it was: original topic, partition and offset; its headers
    (with the earlier failure context, which the next dead letter accumulates) unchanged."""

    message: Message
    context: dict[str, str]

    def topic(self) -> str:
        return self.context.get("topic", "")

    def partition(self) -> int:
        return int(self.context.get("partition", "-1"))

    def offset(self) -> int:
        return int(self.context.get("offset", "-1"))

    def key(self) -> bytes | None:
        return self.message.key()

    def value(self) -> bytes | None:
        return self.message.value()

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.message.headers()

    def timestamp(self) -> tuple[int, int]:
        return self.message.timestamp()


@dataclass(frozen=True, slots=True)
class RedriveFilter:
    stage: str | None = None
    error_class: str | None = None
    failed_since_ms: int | None = None
    failed_until_ms: int | None = None

    def __call__(self, message: Message) -> DeadLetterView | Skip:
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
        return DeadLetterView(message, context)


def add_redrive_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--from-topic", metavar="DLQ", help="dead-letter topic to read (default: that of the "
                                                            "first KAFKA_TOPICS entry)")
    parser.add_argument("--stage", choices=STAGES,
                        help="only dead letters of this stage")
    parser.add_argument("--error-class", help=f"only dead letters whose {HEADER_PREFIX}class is this")
    parser.add_argument("--failed-since", metavar="ISO_TIME", help="only dead letters that last failed since")
    parser.add_argument("--failed-until", metavar="ISO_TIME", help="...and before this time")
    parser.add_argument("--redrive-group", metavar="GROUP",
                        help="consumer group that remembers how far redrive got (default '<group>.redrive'); "
                             "a new name re-reads the whole dead-letter topic")


def redrive_main(args: argparse.Namespace) -> int:
    configure_logging()
    settings = load_settings(args)
    dlq_topic = args.from_topic or settings.dlq_topic_for(settings.topics[0])
    group = args.redrive_group or f"{settings.group_id}.redrive"
    select = RedriveFilter(args.stage, args.error_class,
                           parse_time(args.failed_since) if args.failed_since else None,
                           parse_time(args.failed_until) if args.failed_until else None)
    ranges = redrive_ranges(settings, dlq_topic, group)
    print_ranges(ranges)
    pipeline = run_range(settings, ranges, group, commit=True, select=select)
    _report(f"redrive of {dlq_topic} finished", pipeline)
    return 0


def redrive_ranges(settings: Settings, dlq_topic: str, group: str) -> Ranges:
    """From the redrive group's cursor (or the start) to the end as of now: letters that fail again are
    appended after that end, so one redrive never loops on its own output."""
    consumer = _lookup_consumer(settings, group)
    try:
        partitions = _partitions(consumer, dlq_topic)
        committed = consumer.committed([TopicPartition(dlq_topic, p) for p in partitions], timeout=10)
        watermarks = _watermarks(consumer, dlq_topic, partitions)
        ranges = {}
        for tp in committed:
            low, high = watermarks[tp.partition]
            start = tp.offset if tp.offset >= 0 else low
            ranges[(dlq_topic, tp.partition)] = (max(start, low), high)
        return ranges
    finally:
        consumer.close()
