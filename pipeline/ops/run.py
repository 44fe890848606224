"""`wigzo-pipeline run`: join the consumer group and deliver its topics' events to Wigzo until stopped.

With `--exit-when-idle SECONDS` it is a batch run that tells the truth in its exit code: 0 only once caught
up (partitions were assigned, every one is read to its high watermark, all work is finished, and nothing
new arrived for SECONDS); non-zero, with the reason, when it cannot reach Kafka, find its topics or get a
partition within STARTUP_TIMEOUT. With `--workers N` (WORKERS) a supervisor runs N members, one process
each (pipeline.ops.supervisor). What one member does is pipeline.ops.member, imported only by the process that
runs one: a supervisor loads neither Kafka nor HTTP. SIGHUP (forwarded by the supervisor) reloads the settings
(pipeline.live).
"""

from __future__ import annotations

import argparse

from pipeline.config import SettingsSource, add_options
from pipeline.telemetry.logs import configure_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                        help="batch run: exit 0 once caught up (every assigned partition read to its end, all work "
                             "finished) and nothing new arrived for SECONDS; non-zero if it cannot start its work "
                             "within STARTUP_TIMEOUT")


def main(args: argparse.Namespace) -> int:
    source = SettingsSource.of(args)
    settings = source.load()
    configure_for(settings)
    if settings.workers > 1:
        from pipeline.ops.supervisor import Supervisor

        return Supervisor(settings, args.exit_when_idle, source).run()
    from pipeline.ops.member import run_member

    return run_member(settings, args.exit_when_idle, source)
