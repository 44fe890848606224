"""Logging, set up one way for every command: JSON lines for machines, text for people, one format for all.

librdkafka's own lines come through the `librdkafka` logger: every Kafka client is made with
`with_kafka_logging(config)`, which sets confluent-kafka's `logger`, so its lines share the format instead of
reaching stderr raw, a broker that refuses connections many times a second yields one line a minute per kind
instead of a flood, and a coordinator still loading (which librdkafka retries by itself) is only DEBUG. Every
line passes the secret scrubber. Lines about a message carry its coordinates as fields
(`log.info(..., extra=message_fields(message))`), never its payload.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.config import Settings
from pipeline.model import Scrubber, Secret

KAFKA_LOGGER = logging.getLogger("librdkafka")
# Broker answers librdkafka retries by itself, which a fresh broker or group coordinator gives while it starts
# (e.g. "Failed to acquire idempotence PID from broker ...: Coordinator load in progress: retrying").
TRANSIENT_KAFKA_ANSWERS = ("Coordinator load in progress", "Coordinator not available")
REPEAT_WINDOW = 60.0
CONTEXT_FIELDS = ("topic", "partition", "offset", "message_id")
_VARYING = re.compile(r"\d+")


def message_fields(topic: str | None, partition: int | None, offset: int | None,
                   message_id: str | None = None) -> dict[str, Any]:
    """The `extra` that gives a log line its message's coordinates."""
    fields = {"topic": topic, "partition": partition, "offset": offset, "message_id": message_id}
    return {name: value for name, value in fields.items() if value is not None}


class LibrdkafkaLog:
    """confluent-kafka's `logger`: it calls `log(level, "%s [%s] %s", facility, client, text)` for each line."""

    def log(self, level: int, msg: str, *args: object) -> None:
        if level > logging.DEBUG and any(answer in str(arg) for arg in args for answer in TRANSIENT_KAFKA_ANSWERS):
            level = logging.DEBUG
        KAFKA_LOGGER.log(level, msg, *args)


LIBRDKAFKA_LOG = LibrdkafkaLog()


def with_kafka_logging(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` for a new librdkafka client, with its log lines routed into this logging; every client the
    pipeline makes is made with it. (An admin client's lines wait until it is polled: none reach stderr raw.)"""
    return {**config, "logger": LIBRDKAFKA_LOG}


class JsonFormatter(logging.Formatter):
    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.scrub(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                           if getattr(record, name, None) is not None)
        return self.scrub(f"{text} [{context}]" if context else text)


class RepeatFilter(logging.Filter):
    """Lets the first line of a kind through, then one per window saying how many were held back.
    A kind is the message with its numbers blanked, so 'after 0ms' and 'after 3ms' are the same line."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # kind -> (when last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _VARYING.sub("#", record.getMessage())
        now = self._clock()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self._window:
            self._seen[kind] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} similar lines held back in the last {self._window:.0f}s)"
        self._seen[kind] = (now, 0)
        return True


def configure_logging(level: str, log_format: str, secrets: Iterable[Secret] = ()) -> None:
    """Route every logger (librdkafka's included) to stderr in one format; `auto` is JSON unless a person
    is watching (stderr is a terminal)."""
    scrub = Scrubber(secrets)
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(scrub) if use_json else TextFormatter(scrub))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if not any(isinstance(f, RepeatFilter) for f in KAFKA_LOGGER.filters):
        KAFKA_LOGGER.addFilter(RepeatFilter())


def reconfigure_logging(level: str, secrets: Iterable[Secret]) -> None:
    """A settings reload's log level, and the secrets to scrub from now on (new tokens, and the ones they
    replaced), without replacing the handlers."""
    scrub = Scrubber(secrets)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if isinstance(handler.formatter, (JsonFormatter, TextFormatter)):
            handler.formatter.scrub = scrub


def configure_for(settings: Settings) -> None:
    """Logging as the settings say (LOG_LEVEL, LOG_FORMAT), scrubbing the settings' secrets."""
    configure_logging(settings.log_level, settings.log_format, settings.secrets())
