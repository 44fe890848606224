"""The dead-letter header format: the names of the headers that say where and why a message failed, how they
are built for a letter, and how they are read back.

The writer (`dead_letters.py`) builds them; `redrive`, `dlq`, the demo and the tests read them. Keeping the
format apart from the writer lets the readers depend on the format alone. Names follow Kafka Connect's
`__connect.errors.*` convention under our own prefix, so the tools operators already use on Connect DLQs read
ours too; names and values are a contract with letters already stored, so they never change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import Message

from pipeline import __version__
from pipeline.model import DeadLetter, utc_iso

HEADER_PREFIX = "__wigzo.errors."
TRUNCATED_HEADER = HEADER_PREFIX + "truncated"  # on a letter stored cut down: the original value's size in bytes
MESSAGE_LIMIT = 1000
Headers = Sequence[tuple[str, bytes | None]]


def context_headers(record: Message, letter: DeadLetter, scrub: Callable[[str], str],
                    destination: str) -> list[tuple[str, bytes]]:
    """`destination`: the Wigzo destination that owns the message's topic (`default` unless the config file
    names several)."""
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
        "truncated": earlier.get("truncated", ""),  # a redriven truncated letter is still only a prefix
        "destination": destination,
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
