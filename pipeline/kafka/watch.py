"""What the pipeline tells operators about Kafka itself: unreachable brokers, missing topics, rejected credentials.

librdkafka retries on its own and reports through callbacks and error events, many per second while a broker
is down. `KafkaWatch` turns them into the pipeline's own words: one line when a problem starts, a summary
every `SUMMARY_INTERVAL` while it lasts, one line when it ends. Rejected credentials and authorization
failures are configuration, so they stop the run with a message that says what to fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException

from pipeline.kafka.admin import Trouble, explain
from pipeline.model import PipelineError

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


class KafkaWatch:
    """Fed from the polling thread (librdkafka's error_cb and consumer error events); read by probes and batch runs."""

    def __init__(self, bootstrap: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._bootstrap = bootstrap
        self._clock = clock
        self._problems: dict[Trouble, _Problem] = {}
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

    def problems(self) -> list[str]:
        """The ongoing problems in one line each, for readiness and for the reason a batch run gives up."""
        return [f"{kind}: {problem.latest}" for kind, problem in self._problems.items()]

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
