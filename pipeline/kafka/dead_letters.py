"""The dead-letter topic: the original message, unchanged, plus headers that say why it failed (their format
is `dead_letter_headers.py`). Writes use an idempotent producer with acks=all; a dead letter counts as done
only once the broker acknowledged it, and a failed write halts the pipeline (failing closed beats losing data).

A letter too large for its topic is the one exception: halting on it would crash at the same message
on every restart, so it is stored cut down (context headers, a marker, a prefix of the value) instead.
`prepare` checks every dead-letter topic at start-up, so a bad name or missing permission stops the
run before it reads anything rather than at its first dead letter.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from pipeline.config import Settings
from pipeline.kafka import admin
from pipeline.kafka.dead_letter_headers import TRUNCATED_HEADER, Headers, context_headers, original_headers
from pipeline.kafka.watch import KafkaWatch
from pipeline.model import DeadLetter, PipelineError, Scrubber
from pipeline.telemetry import metrics
from pipeline.telemetry.logs import message_fields, with_kafka_logging

log = logging.getLogger(__name__)

# Kafka's own topic-name rules (org.apache.kafka.common.internals.Topic)
TOPIC_NAME_CHARACTERS = re.compile(r"[a-zA-Z0-9._-]+")
TOPIC_NAME_MAX_LENGTH = 249
# What a letter costs on the wire beyond its key, value and header bytes: the record batch header (61 bytes)
# plus the record's own varints, rounded up; and each header's two length varints.
RECORD_FRAMING = 128
HEADER_FRAMING = 10
# librdkafka checks `message.max.bytes` before compressing, the broker checks the topic's limit after: a letter
# up to this many times the limit is sent whole for the broker to judge (JSON commonly compresses 5-10x).
COMPRESSION_HEADROOM = 10
PRODUCER_MESSAGE_MAX_BYTES = (1000, 1_000_000_000)  # librdkafka's range for message.max.bytes
ADMIN_TIMEOUT = 30.0  # seconds for each start-up question to the broker
Ticket = TypeVar("Ticket")


class DeadLetterWriteError(PipelineError):
    """The dead-letter topic did not accept a message, or cannot be used: the pipeline must stop and not commit."""


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse `name` as a topic name, in words an operator can act on; None if it is legal."""
    if name in ("", ".", ".."):
        return "it may not be empty, '.' or '..'"
    if len(name) > TOPIC_NAME_MAX_LENGTH:
        return f"it is {len(name)} characters long, and Kafka allows at most {TOPIC_NAME_MAX_LENGTH}"
    if not TOPIC_NAME_CHARACTERS.fullmatch(name):
        return "Kafka allows only ASCII letters, digits, '.', '_' and '-'"
    return None


def headers_size(headers: Headers) -> int:
    return sum(HEADER_FRAMING + len(name.encode()) + len(value or b"") for name, value in headers)


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter on its way to the broker, kept until acknowledged so that one refused as too large can
    be stored cut down."""

    topic: str  # the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # the original message's own
    context: list[tuple[str, bytes]]  # ours: where it was read and why it failed; always stored
    timestamp: int
    stage: str
    destination: str
    source: tuple[str, int, int]  # the original's topic, partition, offset (for logs)
    ticket: object  # the writer's caller's, handed back by `poll` once the broker acknowledged the letter
    truncated: bool = False

    def size(self) -> int:
        """An upper bound of its bytes on the wire, before compression."""
        return (RECORD_FRAMING + len(self.key or b"") + len(self.value or b"")
                + headers_size(self.headers) + headers_size(self.context))


def cut_to_fit(letter: Letter, limit: int) -> Letter:
    """What of a letter too large for its topic fits in `limit` bytes even uncompressed: the context headers
    and the truncation marker (the original value's size) always; then the key and the original headers,
    each only if it still fits; then as much of the value as the rest leaves room for."""
    value = letter.value or b""
    marker = dict(letter.context).get(TRUNCATED_HEADER) or str(len(value)).encode()  # cut again: keep the first size
    context = [(name, v) for name, v in letter.context if name != TRUNCATED_HEADER] + [(TRUNCATED_HEADER, marker)]
    room = limit - RECORD_FRAMING - headers_size(context)
    key = letter.key if len(letter.key or b"") <= room else None
    room -= len(key or b"")
    headers = letter.headers if headers_size(letter.headers) <= room else []
    room -= headers_size(headers)
    return replace(letter, key=key, value=None if letter.value is None else value[:max(room, 0)], headers=headers,
                   context=context, truncated=True)


def producer_sizing(limit: int) -> dict[str, int]:
    """librdkafka sizes for topics that accept record batches of up to `limit` bytes. Batches of several letters
    stay within the limit even uncompressed (batch.size); one letter alone may be larger before compression
    (message.max.bytes), for the broker to accept if it compresses below the limit."""
    low, high = PRODUCER_MESSAGE_MAX_BYTES
    return {"batch.size": max(1, limit - RECORD_FRAMING),
            "message.max.bytes": min(max(limit * COMPRESSION_HEADROOM, low), high)}


class DeadLetterWriter(Generic[Ticket]):
    """Writes dead letters from the polling thread only (like the rest of the pipeline's Kafka state), so
    nothing here needs a lock. Acknowledged letters come back as their tickets from `poll`: nothing of the
    caller's runs inside the producer's callbacks."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.scrub = Scrubber(settings.secrets())
        self._watch = KafkaWatch(settings.bootstrap_servers)  # says why the admin client cannot get through
        self._errors = admin.KafkaErrors(forward=self._watch.on_error)
        self._admin = AdminClient(with_kafka_logging({**settings.kafka_client_config(), "error_cb": self._errors}))
        self._limits: dict[str, int] = {}  # dead-letter topic -> its max.message.bytes
        self._producers: dict[int, Producer] = {}  # by topic limit: a producer's sizes are fixed when it is made
        self._refused: list[Letter] = []  # refused as too large; stored cut down outside the delivery callback
        self._acknowledged: deque[Ticket] = deque()  # tickets of letters the broker acknowledged, for `poll`
        self.failure: DeadLetterWriteError | None = None

    def prepare(self, source_topics: Iterable[str]) -> None:
        """Check, before anything is read, every dead-letter topic these sources write to: a legal name, and
        the topic exists (created if absent) and tells its size limit. Raises DeadLetterWriteError naming
        the topic and the fix. A pattern source writes to DLQ_TOPIC (without it the subscription is refused).
        `write` checks any other topic at its first letter (replay or redrive of a topic not in KAFKA_TOPICS)."""
        feeding = admin.dead_letter_feeds(source_topics, self._settings.dlq_topic)
        for topic in feeding:
            self._check_name(topic)
        for topic, sources in feeding.items():
            self._open(topic, sources)

    def write(self, record: Message, letter: DeadLetter, ticket: Ticket) -> None:
        """Queue the dead letter; `poll` hands `ticket` back once the broker has acknowledged it."""
        source = record.topic() or ""
        topic = self._settings.dlq_topic_for(source)
        if topic not in self._limits:
            self._check_name(topic)
            self._open(topic, [source])
        timestamp_type, timestamp = record.timestamp()
        destination = self._settings.destination_of(source)
        self._send(Letter(topic=topic, key=record.key(), value=record.value(),
                          headers=original_headers(record.headers()),
                          context=context_headers(record, letter, self.scrub, destination),
                          timestamp=timestamp if timestamp_type else 0, stage=letter.rejection.stage,
                          destination=destination, source=(source, record.partition(), record.offset()),
                          ticket=ticket))

    def poll(self) -> list[Ticket]:
        """Serve the producers' callbacks; the tickets of the letters acknowledged since the last call (by
        this poll or an earlier `flush`)."""
        for producer in self._producers.values():
            producer.poll(0)
        self._store_refused()
        acknowledged = list(self._acknowledged)
        self._acknowledged.clear()
        return acknowledged

    def flush(self, timeout: float) -> bool:
        """Wait for every queued dead letter to be acknowledged; False if some are still pending."""
        deadline = time.monotonic() + timeout
        while self._unacknowledged() and time.monotonic() < deadline:
            for producer in self._producers.values():
                producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            self._store_refused()
        return self._unacknowledged() == 0

    # ---- sending --------------------------------------------------------------------------------

    def _send(self, letter: Letter) -> None:
        producer = self._producer(self._limits[letter.topic])
        while True:
            try:
                producer.produce(letter.topic, value=letter.value, key=letter.key,
                                 headers=[*letter.headers, *letter.context], timestamp=letter.timestamp,
                                 on_delivery=partial(self._on_broker_answer, letter))
                return
            except BufferError:  # local queue full: let librdkafka drain some acknowledgements first
                producer.poll(0.1)
            except KafkaException as exc:  # refused before sending: larger than message.max.bytes, or worse
                error = exc.args[0]
                if error.code() != KafkaError.MSG_SIZE_TOO_LARGE or letter.truncated:
                    raise self._write_failed(letter, error) from None
                self._store_cut(letter)
                return

    def _on_broker_answer(self, letter: Letter, error: KafkaError | None, _message: object) -> None:
        """The producer's delivery report, run inside its poll or flush: acknowledged, refused as too large, or
        failed."""
        if error is None:
            metrics.DLQ_WRITES.labels(letter.stage, letter.destination).inc()
            if letter.truncated:
                metrics.DLQ_TRUNCATED.labels(letter.stage, letter.destination).inc()
            self._acknowledged.append(letter.ticket)  # type: ignore[arg-type]
        elif error.code() == KafkaError.MSG_SIZE_TOO_LARGE and not letter.truncated:
            self._refused.append(letter)
        elif self.failure is None:
            self.failure = self._write_failed(letter, error)

    def _store_refused(self) -> None:
        while self._refused:
            self._store_cut(self._refused.pop(0))

    def _store_cut(self, letter: Letter) -> None:
        """Store what fits of a letter the topic cannot take whole, loudly: its coordinates are never lost,
        and the run goes on instead of crashing at the same message on every restart."""
        limit = self._limits[letter.topic]
        cut = cut_to_fit(letter, min(limit, producer_sizing(limit)["message.max.bytes"]))  # librdkafka's check too
        topic, partition, offset = letter.source
        log.error("dead letter for %s[%d]@%d (stage %s) is about %d bytes, more than dead-letter topic %s accepts "
                  "(max.message.bytes %d): stored truncated, value cut from %d to %d bytes, "
                  "with header %s; raise the topic's max.message.bytes to keep such letters whole",
                  topic, partition, offset, letter.stage, letter.size(), letter.topic, limit,
                  len(letter.value or b""), len(cut.value or b""), TRUNCATED_HEADER,
                  extra=message_fields(topic, partition, offset))
        self._send(cut)

    def _write_failed(self, letter: Letter, error: KafkaError) -> DeadLetterWriteError:
        topic, partition, offset = letter.source
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            fix = (f"Even cut down to {letter.size()} bytes the letter is too large; raise max.message.bytes of "
                   f"{letter.topic!r} (it is {self._limits[letter.topic]})")
        else:
            fix = "Check the topic exists and this client may write to it."
        return DeadLetterWriteError(
            f"could not write the dead letter for {topic}[{partition}]@{offset} to dead-letter topic "
            f"{letter.topic!r}: {error.str()}; stopping without committing so nothing is lost. {fix}")

    def _unacknowledged(self) -> int:
        return sum(len(producer) for producer in self._producers.values()) + len(self._refused)

    def _producer(self, limit: int) -> Producer:
        """The producer for topics of this size limit; zstd unless the pass-through picks another compression."""
        producer = self._producers.get(limit)
        if producer is None:
            producer = self._producers[limit] = Producer(with_kafka_logging({
                "compression.type": "zstd",
                **self._settings.kafka_client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "client.id": "segment-wigzo-dlq",
                **producer_sizing(limit),
            }))
        return producer

    # ---- the topics -----------------------------------------------------------------------------

    def _check_name(self, topic: str) -> None:
        if (problem := topic_name_problem(topic)) is not None:
            raise DeadLetterWriteError(
                f"dead-letter topic {topic!r} is not a valid Kafka topic name: {problem}. Set DLQ_TOPIC "
                f"(--dlq-topic) to a name of 1 to {TOPIC_NAME_MAX_LENGTH} ASCII letters, digits, '.', '_' or '-'")

    def _open(self, topic: str, sources: Sequence[str]) -> None:
        """Make sure the topic exists, created if absent with as many partitions as its largest source (like
        the source, keyed letters spread over partitions), and learn its size limit."""
        try:
            metadata = admin.cluster_metadata(self._admin, self._errors, ADMIN_TIMEOUT)
            partitions = admin.source_partitions(metadata, sources)
            ensured = admin.ensure_topic(self._admin, metadata, topic, partitions, ADMIN_TIMEOUT)
        except admin.KafkaUnreachable as exc:
            self._watch.raise_if_fatal()  # rejected credentials say so, rather than "transport failure"
            raise DeadLetterWriteError(f"could not check dead-letter topic {topic!r}: {exc.reason.str()}; "
                                       f"{exc.fix}") from None
        except admin.TopicCreateError as exc:
            fix = (f"create it ({exc.partitions} partition(s)) or allow this client to create topics" if exc.reason
                   else "check the brokers, or create it yourself")
            raise DeadLetterWriteError(f"dead-letter {exc}; {fix}") from None
        if ensured.created:
            log.info("created dead-letter topic %s with %d partitions", topic, ensured.partitions)
        self._limits[topic] = self._max_message_bytes(topic)

    def _max_message_bytes(self, topic: str) -> int:
        """The largest record batch the topic accepts: its max.message.bytes, which Kafka reports as the
        broker's message.max.bytes when the topic sets none. A topic just created may not have reached the
        broker that answers yet, so an unknown topic is asked about again for a while."""
        resource = ConfigResource(ResourceType.TOPIC, topic)
        deadline = time.monotonic() + ADMIN_TIMEOUT
        while True:
            future = self._admin.describe_configs([resource], request_timeout=ADMIN_TIMEOUT)[resource]
            try:
                return int(future.result(timeout=ADMIN_TIMEOUT + 5)["max.message.bytes"].value)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                reason = error.str()
            except TimeoutError:
                reason = f"no answer within {ADMIN_TIMEOUT:.0f}s"
            raise DeadLetterWriteError(
                f"could not read the size limit (max.message.bytes) of dead-letter topic {topic!r}: {reason}; "
                "allow this client to describe the topic's configuration (DescribeConfigs)")
