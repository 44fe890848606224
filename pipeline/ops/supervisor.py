"""`run --workers N`: N consumer-group members in one container, one process each, so every core works.

One Python process keeps one core busy (the GIL), so a container with more cores runs more members. The
supervisor starts them, forwards SIGTERM/SIGINT (each member drains and commits as it would alone) and SIGHUP
(each member reloads its settings: pipeline.live), restarts a member that crashed with exponential backoff, and
gives up (exit 1) when members keep crashing, so the orchestrator sees it. It serves one METRICS_PORT for all:
/metrics sums every member (prometheus-client multiprocess mode), /healthz fails when any member's loop stalls,
/readyz lists every member's reasons. Scaling beyond one machine stays Kafka's consumer-group protocol: more
replicas, more partitions.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pipeline.config import Settings, SettingsSource
from pipeline.ops.member_health import MemberHealth
from pipeline.telemetry.probes import ProbeApp, ProbeServer

log = logging.getLogger(__name__)

CRASH_WINDOW = 60.0     # seconds over which crashes are counted
MAX_CRASHES = 5         # crashes of one member within the window before the supervisor gives up
BACKOFF_CAP = 30.0


@dataclass
class _Member:
    index: int
    health: MemberHealth
    process: SpawnProcess | None = None
    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    done: bool = False


def _member_main(settings: Settings, quiet_seconds: float | None, source: SettingsSource,
                 health: MemberHealth) -> None:
    """A member process: the same run as `wigzo-pipeline run` alone, reporting health to the supervisor."""
    from pipeline.ops.member import run_member  # imported here: the child sets up metrics before anything else
    from pipeline.telemetry.logs import configure_for

    configure_for(settings)
    raise SystemExit(run_member(settings, quiet_seconds, source, health))


class Supervisor:
    def __init__(self, settings: Settings, quiet_seconds: float | None, source: SettingsSource) -> None:
        self._settings = settings  # as read: a member's reload compares what it reads again with it
        self._quiet_seconds = quiet_seconds
        self._source = source
        self._context = multiprocessing.get_context("spawn")
        self._members = [_Member(index, MemberHealth.shared(self._context, time.monotonic()))
                         for index in range(settings.workers)]
        self._stopping = 0  # signals received

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="wigzo-pipeline-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any member starts: they inherit it
        probes = self._serve_probes()
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        try:
            for member in self._members:
                self._start(member)
            return self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for member in self._members:
                if member.process is not None and member.process.is_alive():
                    member.process.kill()
                    member.process.join()
            if probes is not None:
                probes.stop()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _serve_probes(self) -> ProbeServer | None:
        if not self._settings.metrics_port:
            return None
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        app = ProbeApp(self._stalest_poll, self._reasons, registry=registry)
        return ProbeServer(app, self._settings.metrics_port).start()

    def _stalest_poll(self) -> float:
        return min(member.health.last_poll.value for member in self._members if not member.done) \
            if not all(member.done for member in self._members) else time.monotonic()

    def _reasons(self) -> list[str]:
        reasons = []
        for member in self._members:
            if member.process is None or not member.process.is_alive():
                reasons.append(f"member {member.index}: not running")
            reasons += [f"member {member.index}: {reason}" for reason in member.health.read_reasons()]
        return reasons

    def _start(self, member: _Member) -> None:
        """The member starts with SIGHUP blocked (it inherits the mask), so one forwarded while it starts waits
        for it to be ready to take it instead of ending it; it unblocks SIGHUP once it handles it."""
        member.health.publish(time.monotonic(), ["starting"])
        member.process = self._context.Process(  # type: ignore[attr-defined]
            target=_member_main, args=(self._settings, self._quiet_seconds, self._source, member.health),
            name=f"wigzo-pipeline-member-{member.index}")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            member.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        member.restart_at = None
        log.info("member %d started (pid %d)", member.index, member.process.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping += 1
        log.info("signal %d: forwarding to every member%s", signum,
                 "" if self._stopping == 1 else " (second: they exit at once)")
        for member in self._members:
            if member.process is not None and member.process.is_alive():
                os.kill(member.process.pid, signal.SIGTERM)  # type: ignore[arg-type]

    def _on_sighup(self, _signum: int, _frame: object) -> None:
        log.info("SIGHUP: forwarding to every member, which reload their settings")
        for member in self._members:
            if member.process is not None and member.process.is_alive():
                os.kill(member.process.pid, signal.SIGHUP)  # type: ignore[arg-type]

    def _watch(self) -> int:
        """Until every member is done: reap exits, restart crashed members (live runs), decide the exit code."""
        failed = False
        while not all(member.done for member in self._members):
            time.sleep(0.2)
            now = time.monotonic()
            for member in self._members:
                process = member.process
                if member.done or process is None:
                    continue
                if member.restart_at is not None:
                    if now >= member.restart_at and not self._stopping:
                        self._start(member)
                    elif self._stopping:
                        member.done = True
                    continue
                if process.is_alive():
                    continue
                _mark_dead(process.pid)
                code = process.exitcode
                if code == 0 or self._stopping:
                    member.done = True
                    failed |= code not in (0, None) and not (self._stopping and code < 0)
                elif self._quiet_seconds is not None:  # a batch run's failure is its answer: do not retry it
                    log.error("member %d exited %s", member.index, code)
                    member.done = failed = True
                elif self._crashed(member, now):
                    log.error("member %d keeps crashing (%d times in %.0fs): giving up so the orchestrator sees it",
                              member.index, len(member.crashes), CRASH_WINDOW)
                    self._on_signal(signal.SIGTERM, None)
                    member.done = failed = True
        return 1 if failed else 0

    def _crashed(self, member: _Member, now: float) -> bool:
        """Record a crash and schedule the restart; True when the member crashed too often to go on."""
        member.crashes = [at for at in member.crashes if now - at < CRASH_WINDOW] + [now]
        if len(member.crashes) >= MAX_CRASHES:
            return True
        delay = min(BACKOFF_CAP, 2.0 ** (len(member.crashes) - 1))
        log.warning("member %d exited with %s; restarting it in %.0fs", member.index,
                    member.process.exitcode if member.process else "?", delay)
        member.restart_at = now + delay
        return False


def _mark_dead(pid: int | None) -> None:
    """Drop a dead member's live gauges (in flight, concurrency) from the sum."""
    if pid is not None:
        mark_process_dead(pid)
