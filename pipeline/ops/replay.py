"""`wigzo-pipeline replay`: reprocess a range of a topic (by time or offsets) after an incident.

It runs the same pipeline as `run`, under manual assignment in a throwaway group, and commits nothing,
so the live consumer group is never touched.
"""

from __future__ import annotations

import argparse
import time

from pipeline.config import Settings, add_options, load_settings
from pipeline.model import PipelineError
from pipeline.ops.lookups import (
    Ranges,
    lookup_offsets,
    offsets_at,
    parse_time,
    print_ranges,
    report,
    run_range,
    watermarks,
)
from pipeline.telemetry.logs import configure_for


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


def resolve_ranges(settings: Settings, topic: str, *, since: str | None, until: str | None,
                   offsets: str | None) -> Ranges:
    lookup = lookup_offsets(settings)
    partitions = lookup.partitions(topic)
    marks = watermarks(lookup, topic, partitions)
    if offsets:
        explicit = parse_offset_ranges(offsets)
        unknown = set(explicit) - set(partitions)
        if unknown:
            raise PipelineError(f"{topic!r} has no partition {sorted(unknown)}; it has {partitions}")
        return {(topic, p): (max(start, marks[p][0]), min(end, marks[p][1]))
                for p, (start, end) in explicit.items()}
    starts = offsets_at(lookup, topic, partitions, parse_time(since)) if since else \
        {p: low for p, (low, _) in marks.items()}
    ends = offsets_at(lookup, topic, partitions, parse_time(until)) if until else \
        {p: high for p, (_, high) in marks.items()}
    return {(topic, p): (starts[p], max(starts[p], ends[p])) for p in partitions}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--topic", help="topic to replay (default: the first of KAFKA_TOPICS)")
    parser.add_argument("--from", dest="since", metavar="ISO_TIME", help="replay messages from this time")
    parser.add_argument("--to", dest="until", metavar="ISO_TIME", help="...up to (excluding) this time")
    parser.add_argument("--offsets", metavar="P:START-END,...",
                        help="replay these offsets instead (END exclusive), e.g. 0:100-200,3:0-50")
    parser.add_argument("--dry-run", action="store_true", help="print what would be replayed, per partition")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_for(settings)
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
    return report("replay finished", pipeline)
