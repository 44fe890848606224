"""The dead-letter topic: the original message, unchanged, plus headers that say why it failed.

Header names follow Kafka Connect's `__connect.errors.*` convention under our own prefix, so the
tools operators already use to inspect Connect DLQs read ours too. Writes use an idempotent
producer with acks=all; a dead letter counts as done only once the broker acknowledged it, and a
failed write halts the pipeline (failing closed beats losing data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline import __version__
from pipeline.config import Settings
from pipeline.model import DeadLetter, PipelineError, Scrubber, utc_iso

log = logging.getLogger(__name__)

HEADER_PREFIX = "__wigzo.errors."
MESSAGE_LIMIT = 1000
Headers = Sequence[tuple[str, bytes | None]]


class DeadLetterWriteError(PipelineError):
    """The dead-letter topic did not accept a message: the pipeline must stop and not commit."""


def context_headers(record: Message, letter: DeadLetter, scrub: Callable[[str], str]) -> list[tuple[str, bytes]]:
    rejection = letter.rejection
    earlier = error_headers(record.headers())  # a redriven dead letter keeps its history and adds to it
    fields = {
        "topic": record.topic() or "",
        "partition": str(record.partition()),
        "offset": str(record.offset()),
        "stage": rejection.stage,
        "class": rejection.error_class,
        "message": scrub(rejection.message)[:MESSAGE_LIMIT],
        "field": rejection.field,
        "attempts": str(letter.attempts + int(earlier.get("attempts", "0"))),
        "first.failure": earlier.get("first.failure") or utc_iso(letter.first_failure),
        "last.failure": utc_iso(letter.last_failure),
        "http.status": "" if rejection.http_status is None else str(rejection.http_status),
        "history": scrub("\n".join(filter(None, (earlier.get("history"), *letter.history))))[-MESSAGE_LIMIT:],
        "service.version": __version__,
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in fields.items() if value]


def original_headers(headers: Headers | None) -> list[tuple[str, bytes | None]]:
    """The headers a message had before it was dead-lettered (for redrive)."""
    return [(k, v) for k, v in (headers or []) if not k.startswith(HEADER_PREFIX)]


def error_headers(headers: Headers | None) -> dict[str, str]:
    """The dead-letter context, keyed by the name after the prefix (e.g. 'stage', 'attempts')."""
    return {k[len(HEADER_PREFIX):]: (v or b"").decode("utf-8", "replace")
            for k, v in (headers or []) if k.startswith(HEADER_PREFIX)}


class DeadLetterWriter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.scrub = Scrubber((settings.wigzo_org_token, settings.wigzo_api_token))
        self._producer = Producer({
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "client.id": "segment-wigzo-dlq",
        })
        self._admin = AdminClient(settings.kafka_client_config())
        self._known_topics: set[str] = set()  # written only from the polling thread, like the rest of this class
        self.failure: DeadLetterWriteError | None = None

    def write(self, record: Message, letter: DeadLetter, on_durable: Callable[[], None]) -> None:
        """Queue the dead letter; `on_durable` runs (from `poll`) once the broker has acknowledged it."""
        source = record.topic() or ""
        topic = self._settings.dlq_topic_for(source)
        self._ensure_topic(topic, source)
        headers = original_headers(record.headers()) + context_headers(record, letter, self.scrub)
        timestamp_type, timestamp = record.timestamp()

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                self.failure = DeadLetterWriteError(
                    f"could not write to dead-letter topic {topic!r}: {error.str()}; stopping without "
                    "committing so nothing is lost. Check the topic exists and this client may write to it.")
                return
            on_durable()

        while True:
            try:
                self._producer.produce(topic, value=record.value(), key=record.key(), headers=headers,
                                       timestamp=timestamp if timestamp_type else 0, on_delivery=delivered)
                return
            except BufferError:  # local queue full: let librdkafka drain some acknowledgements first
                self._producer.poll(0.1)

    def _ensure_topic(self, topic: str, source: str) -> None:
        """Create the DLQ with the source's partition count the first time we need it, if permitted."""
        if topic in self._known_topics:
            return
        metadata = self._admin.list_topics(timeout=10)
        if topic not in metadata.topics:
            partitions = len(metadata.topics[source].partitions) if source in metadata.topics else 1
            future = self._admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
            try:
                future.result(timeout=30)
                log.info("created dead-letter topic %s with %d partitions", topic, partitions)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning("could not create dead-letter topic %s (%s); writing anyway", topic, exc)
        self._known_topics.add(topic)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> bool:
        """Wait for every queued dead letter to be acknowledged; False if some are still pending."""
        deadline = time.monotonic() + timeout
        while len(self._producer) and time.monotonic() < deadline:
            self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        return len(self._producer) == 0
