"""`wigzo-pipeline run`: join the consumer group and deliver its topics' events to Wigzo until stopped."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from pipeline.config import add_options, load_settings
from pipeline.kafka.assignment import GroupSubscription
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.runner import build_pipeline, run_pipeline
from pipeline.telemetry.logs import configure_logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                        help="exit once nothing was read for SECONDS and all work is finished (batch runs)")


def main(args: argparse.Namespace) -> int:
    configure_logging()
    settings = load_settings(args)
    pipeline = build_pipeline(settings, GroupSubscription(settings.topics, settings.dlq_topic))
    stop_when = _idle_for(pipeline, args.exit_when_idle) if args.exit_when_idle else None
    run_pipeline(pipeline, settings, stop_when=stop_when)
    totals = pipeline.outcomes.totals()
    log.info("stopped: read %d, %s; %d left unfinished (uncommitted, redone by the next owner), %d delivered "
             "after their partition was released (may be delivered again)", pipeline.stats.read,
             ", ".join(f"{outcome.value} {count}" for outcome, count in totals.items()),
             pipeline.stats.aborted, pipeline.stats.duplicate_risk)
    return 0


def _idle_for(pipeline: Pipeline, seconds: float) -> Callable[[], bool]:
    """A stop condition: nothing read for `seconds` and nothing left unfinished."""
    clock = time.monotonic
    last = [clock(), pipeline.stats.read]

    def idle() -> bool:
        now = clock()
        if pipeline.stats.read != last[1]:
            last[:] = [now, pipeline.stats.read]
        return now - last[0] >= seconds and pipeline.outstanding() == 0

    return idle
