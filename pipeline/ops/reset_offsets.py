"""`wigzo-pipeline reset-offsets`: move the live group's committed offsets (refused while it has members)."""

from __future__ import annotations

import argparse

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.config import add_options, load_settings
from pipeline.model import PipelineError
from pipeline.ops.lookups import lookup_offsets, offsets_at, parse_time, watermarks
from pipeline.telemetry.logs import configure_for, with_kafka_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, {"bootstrap_servers", "topics", "group_id", "kafka_config"})
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-datetime", metavar="ISO_TIME", help="the first offset at or after this time")
    target.add_argument("--to-offset", type=int, metavar="N", help="this offset in every partition")
    target.add_argument("--to-earliest", action="store_true", help="the start of each partition")
    target.add_argument("--to-latest", action="store_true", help="the end of each partition (skip the backlog)")
    parser.add_argument("--dry-run", action="store_true", help="show the before/after table, change nothing")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_for(settings)
    admin = AdminClient(with_kafka_logging(settings.kafka_client_config()))
    group = settings.group_id
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    if description.members:
        raise PipelineError(f"group {group!r} has {len(description.members)} active member(s); stop every "
                            "`wigzo-pipeline run` of this group first, then reset")
    lookup = lookup_offsets(settings, group)
    rows = []
    for topic in settings.topics:
        partitions = lookup.partitions(topic)
        before = lookup.committed((topic, p) for p in partitions)
        marks = watermarks(lookup, topic, partitions)
        if args.to_datetime:
            after = offsets_at(lookup, topic, partitions, parse_time(args.to_datetime))
        elif args.to_offset is not None:
            after = {p: min(max(args.to_offset, low), high) for p, (low, high) in marks.items()}
        elif args.to_earliest:
            after = {p: low for p, (low, _) in marks.items()}
        else:
            after = {p: high for p, (_, high) in marks.items()}
        rows += [(topic, p, before[(topic, p)], after[p]) for p in partitions]
    print(f"group {group}")
    print(f"{'topic':<30} {'partition':>9} {'before':>10} {'after':>10}")
    for topic, partition, before_offset, after_offset in rows:
        shown = "-" if before_offset < 0 else str(before_offset)
        print(f"{topic:<30} {partition:>9} {shown:>10} {after_offset:>10}")
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p, o) for t, p, _, o in rows])
    admin.alter_consumer_group_offsets([request])[group].result(timeout=15)
    print("offsets moved")
    return 0

