"""What the pipeline tells operators about Kafka itself: unreachable brokers, missing topics, rejected credentials.

librdkafka retries on its own and reports through callbacks and error events, many per second while a broker
is down. `KafkaWatch` turns them into the pipeline's own words: one line when a problem starts, a summary
every `SUMMARY_INTERVAL` while it lasts, one line when it ends. Rejected credentials and authorization
failures are configuration, so they stop the run with a message that says what to fix.

A broker that hangs (a stopped process, a full disk, a network that drops packets) raises no error at all for
a long while: librdkafka waits out its request timeouts. So the watch also reads librdkafka's statistics: a
broker that has requests waiting and has sent nothing back for `stall_after` seconds is reported as silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException

from pipeline.kafka.admin import Trouble, explain
from pipeline.model import PipelineError
from pipeline.telemetry import metrics

log = logging.getLogger(__name__)

SUMMARY_INTERVAL = 30.0
PROBE_INTERVAL = 10.0  # while a problem lasts, how often to ask for metadata to notice Kafka is back


class KafkaAccessError(PipelineError):
    """Kafka refused this client's credentials or permissions: a configuration problem, never retried away."""


@dataclass
class _Problem:
    """One ongoing condition (e.g. 'unreachable'): when it began, how often it was reported, the latest cause."""

    since: float
    count: int
    latest: str
    last_summary: float


@dataclass
class _Broker:
    """What librdkafka's statistics last said of one broker (all its connections together)."""

    heard: float  # when it last sent anything (monotonic)
    waiting: int = 0  # requests sent or queued, not answered
    silent_since: float | None = None  # reported as silent since then


class KafkaWatch:
    """Fed from the polling thread (librdkafka's error_cb, stats_cb and consumer error events); read by probes
    and batch runs."""

    def __init__(self, bootstrap: str, clock: Callable[[], float] = time.monotonic, stall_after: float = 15.0) -> None:
        self._bootstrap = bootstrap
        self._clock = clock
        self._stall_after = stall_after
        self._problems: dict[Trouble, _Problem] = {}
        self._brokers: dict[str, _Broker] = {}
        self._last_probe = clock()
        self.fatal: KafkaAccessError | None = None

    def on_error(self, error: KafkaError) -> None:
        explanation = explain(error)
        if explanation.trouble in (Trouble.CREDENTIALS, Trouble.AUTHORIZATION) or error.fatal():
            self._fail(error)
        elif explanation.trouble is Trouble.UNREACHABLE:
            self._report(Trouble.UNREACHABLE, f"cannot reach Kafka at {self._bootstrap}: {error.str()}",
                         explanation.fix)
        elif explanation.trouble is Trouble.MISSING_TOPIC:
            self._report(Trouble.MISSING_TOPIC, error.str(), explanation.fix)
        else:
            log.warning("Kafka reported: %s", error.str())

    def reached(self, *, topics: bool = True) -> None:
        """Kafka answered: problems of reaching it are over. An answer about our topics (an assignment, which
        librdkafka makes only once the subscribed topics exist, or a commit) also ends a missing topic; a bare
        metadata answer (`topics=False`) does not, or a member would say its still missing topic was found."""
        for kind in (Trouble.UNREACHABLE, Trouble.MISSING_TOPIC) if topics else (Trouble.UNREACHABLE,):
            if (problem := self._problems.pop(kind, None)) is not None:
                log.info("Kafka: %s resolved after %.0fs (%d reports)", kind, self._clock() - problem.since,
                         problem.count)

    def on_stats(self, text: str) -> None:
        """librdkafka's statistics (stats_cb): when each broker last answered, and what waits for it."""
        now = self._clock()
        seen: dict[str, tuple[float, int]] = {}
        for broker in orjson.loads(text).get("brokers", {}).values():
            name = broker.get("nodename") or "?"
            idle = broker.get("rxidle", -1)  # microseconds since this connection last received; -1: never
            heard = now - idle / 1e6 if idle >= 0 else float("-inf")
            waiting = broker.get("waitresp_cnt", 0) + broker.get("outbuf_cnt", 0)
            before = seen.get(name, (float("-inf"), 0))
            seen[name] = (max(before[0], heard), before[1] + waiting)
        for name, (heard, waiting) in seen.items():
            known = self._brokers.setdefault(name, _Broker(heard=now))
            known.heard = max(known.heard, heard)
            known.waiting = waiting

    def check_silence(self, working: bool) -> None:
        """Report a broker that has requests waiting and has answered nothing for `stall_after` seconds while
        this member has work assigned, once; and how long it lasted when it answers again."""
        now = self._clock()
        for name, broker in self._brokers.items():
            silent = now - broker.heard
            if broker.silent_since is None and working and broker.waiting and silent >= self._stall_after:
                broker.silent_since = broker.heard
                log.warning("Kafka broker %s has answered nothing for %.0fs (%d requests waiting): fetching and "
                            "committing are stalled while librdkafka waits for it; the pipeline keeps its work "
                            "and carries on when the broker answers", name, silent, broker.waiting)
            elif broker.silent_since is not None and silent < self._stall_after:
                log.info("Kafka broker %s answers again after %.0fs without an answer", name,
                         broker.heard - broker.silent_since)
                broker.silent_since = None
        metrics.KAFKA_SILENT.set(any(broker.silent_since is not None for broker in self._brokers.values()))

    def problems(self) -> list[str]:
        """The ongoing problems in one line each, for readiness and for the reason a batch run gives up."""
        now = self._clock()
        silent = [f"no answer for {now - broker.heard:.0f}s from broker {name}"
                  for name, broker in self._brokers.items() if broker.silent_since is not None]
        return silent + [f"{kind}: {problem.latest}" for kind, problem in self._problems.items()]

    def tick(self) -> None:
        """A summary line for each problem still going on, every SUMMARY_INTERVAL."""
        now = self._clock()
        for kind, problem in self._problems.items():
            if now - problem.last_summary >= SUMMARY_INTERVAL:
                problem.last_summary = now
                log.warning("Kafka: still %s after %.0fs (%d reports; latest: %s)", kind, now - problem.since,
                            problem.count, problem.latest)

    def check_in(self, consumer: Consumer) -> None:
        """A summary of each ongoing problem; while one lasts, a metadata request now and then notices Kafka's
        return even when no message flows."""
        self.tick()
        now = self._clock()
        if self._problems and now - self._last_probe >= PROBE_INTERVAL:
            self._last_probe = now
            try:
                consumer.list_topics(timeout=1.0)
            except KafkaException:
                return
            self.reached(topics=False)

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def _report(self, kind: Trouble, detail: str, fix: str) -> None:
        now = self._clock()
        problem = self._problems.get(kind)
        if problem is None:
            self._problems[kind] = _Problem(now, 1, detail, now)
            log.error("Kafka: %s (%s); the pipeline keeps trying", detail, fix)
        else:
            problem.count += 1
            problem.latest = detail

    def _fail(self, error: KafkaError) -> None:
        if self.fatal is None:
            self.fatal = KafkaAccessError(
                f"Kafka refused this client ({error.name()}): {error.str()}. Check the credentials and permissions "
                "in KAFKA_OPT_SECURITY_PROTOCOL, KAFKA_OPT_SASL_MECHANISMS, KAFKA_OPT_SASL_USERNAME and "
                "KAFKA_OPT_SASL_PASSWORD (or the [kafka] table of the config file), and the ACLs for the topics "
                "and the consumer group")
