"""One member of the consumer group, as `wigzo-pipeline run` starts it: alone (serving its own probes) or under
the `--workers` supervisor (sharing its health), in live or batch mode (`--exit-when-idle`). Its settings are
live (pipeline.live): SIGHUP, or a change to a file they were read from, reloads them without a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.config import Settings, SettingsSource
from pipeline.kafka.assignment import BrokerOffsets, GroupSubscription
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.runner import build_pipeline, run_pipeline
from pipeline.kafka.status import Status
from pipeline.model import PipelineError
from pipeline.ops.member_health import MemberHealth
from pipeline.telemetry.probes import ProbeApp, ProbeServer

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 0.5  # how often a supervised member shares its health


class BatchRunFailed(PipelineError):
    """A batch run could not do its work (never started, or left events held): it exits non-zero instead of
    claiming success."""


def run_member(settings: Settings, quiet_seconds: float | None, source: SettingsSource,
               health: MemberHealth | None = None) -> int:
    """One member of the group, alone (serving its own probes) or under a supervisor (sharing its health);
    `source` is where `settings` were read from, to read them again while it runs."""
    with _sighup_reloads() as reload_to:
        return _run_member(settings, quiet_seconds, source, health, reload_to)


@contextmanager
def _sighup_reloads() -> Iterator[list[Pipeline]]:
    """SIGHUP reloads the settings of the pipeline put in the list once it is built; before that it is ignored
    (a member that is starting reads its files then anyway: a change since is seen by the file watcher), never
    the default, which would end the process. The supervisor starts members with SIGHUP blocked, so none is lost
    while they start; it is unblocked here. Only the main thread receives signals: elsewhere nothing changes."""
    built: list[Pipeline] = []
    if threading.current_thread() is not threading.main_thread():
        yield built
        return

    def reload(_signum: int, _frame: object) -> None:
        if built and built[0].live is not None:
            built[0].live.request()

    previous = signal.signal(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        yield built
    finally:
        signal.signal(signal.SIGHUP, previous)


def _run_member(settings: Settings, quiet_seconds: float | None, source: SettingsSource,
                health: MemberHealth | None, reload_to: list[Pipeline]) -> int:
    offsets = (BrokerOffsets(settings.kafka_client_config(), settings.group_id)
               if quiet_seconds is not None else None)  # only a batch run asks whether it is caught up
    subscription = GroupSubscription(settings.topics, settings.dlq_topic, offsets)
    try:
        pipeline = build_pipeline(settings, subscription, live=source)
        reload_to.append(pipeline)
    except PipelineError as exc:
        if health is None:
            raise
        log.error("%s", exc)  # a supervised member has no CLI above it to print the message
        return 2
    status = pipeline.status
    conditions = [batch_end(status, subscription, settings, quiet_seconds)] if quiet_seconds is not None else []
    if health is not None:
        conditions.append(_sharing(pipeline, health))
    probes = (ProbeServer(ProbeApp(lambda: status.last_poll, status.readiness), settings.metrics_port).start()
              if settings.metrics_port and health is None else None)
    try:
        run_pipeline(pipeline, settings, stop_when=(lambda: any([check() for check in conditions])) if conditions
                     else None)
    except PipelineError as exc:
        if health is None:
            raise
        log.error("%s", exc)
        return 2
    finally:
        if probes is not None:
            probes.stop()
    stats, totals = status.stats, status.outcomes.totals()
    log.info("stopped: read %d, %s; %d left unfinished (uncommitted, redone by the next owner), %d delivered "
             "after their partition was released (may be delivered again)", stats.read,
             ", ".join(f"{outcome.value} {count}" for outcome, count in totals.items()),
             stats.aborted + stats.held, stats.duplicate_risk)
    if quiet_seconds is not None and stats.held:
        failure = BatchRunFailed(f"not caught up: {stats.held} events left uncommitted because {stats.held_because}")
        if health is None:
            raise failure
        log.error("%s", failure)
        return 2
    return 0


def _sharing(pipeline: Pipeline, health: MemberHealth) -> Callable[[], bool]:
    """A stop condition that shares the member's health with its supervisor twice a second, and drains the
    member if the supervisor is gone (killed outright): an orphan would hold partitions nobody watches."""
    shared = [0.0]
    supervisor = os.getppid()
    status = pipeline.status

    def share() -> bool:
        if status.last_poll - shared[0] >= HEALTH_INTERVAL:
            shared[0] = status.last_poll
            health.publish(status.last_poll, status.readiness())
            if os.getppid() != supervisor and not pipeline.shutting_down:
                log.warning("the supervisor is gone: draining and stopping this member")
                pipeline.request_shutdown()
        return False

    return share


def batch_end(status: Status, subscription: GroupSubscription, settings: Settings, quiet_seconds: float,
              clock: Callable[[], float] = time.monotonic) -> Callable[[], bool]:
    """The stop condition of a batch run: caught up and quiet for `quiet_seconds`; raises BatchRunFailed when
    no partition was assigned within the start-up timeout."""
    started = clock()
    caught_up_since: list[float] = []

    def done() -> bool:
        now = clock()
        if not subscription.assigned and now - started >= settings.startup_timeout:
            raise BatchRunFailed(_why_no_partitions(status, settings))
        if status.stuck():
            return True  # only events a mapping streak holds are left: run_member says why and fails
        if not status.finished():
            caught_up_since.clear()
            return False
        if not caught_up_since:
            caught_up_since.append(now)
        return now - caught_up_since[0] >= quiet_seconds

    return done


def _why_no_partitions(status: Status, settings: Settings) -> str:
    waited = f"after {settings.startup_timeout:.0f}s (STARTUP_TIMEOUT)"
    if problems := status.kafka_problems():
        return f"no partition of {', '.join(settings.topics)} was assigned {waited}: " + "; ".join(problems)
    if not status.joined:
        return (f"did not join consumer group {settings.group_id!r} {waited}; check KAFKA_BOOTSTRAP_SERVERS "
                "and that the topics exist")
    return (f"joined consumer group {settings.group_id!r} but was assigned no partition of "
            f"{', '.join(settings.topics)} {waited}: the topics may not exist, or the group already has a member "
            "for every partition")
