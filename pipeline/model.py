"""The pipeline's one vocabulary: the values that pass between stages, and how things fail.

Decoding, mapping and delivery each return one of these instead of raising, so the consume loop can
route every message to exactly one `Outcome` without try/except around the hot path:

- `Rejection`: why a message cannot be delivered (its `Stage` and cause); becomes a `DeadLetter`.
- `Deliver` / `Skip`: the mapping's decision; `Delivered` / `DeliveryFailed` / `Aborted`: delivery's.
- `Outcome`: delivered, skipped (with a reason) or dead-lettered (with its stage), nothing else.

Errors a user can act on are `PipelineError`s; the CLI prints their message and exits 2. Its subclasses:
`ConfigError` (pipeline.config), `SchemaRegistryUnavailable` (pipeline.contract.registry),
`DeadLetterWriteError` (pipeline.kafka.dead_letters), `KafkaUnreachable`, `TopicNotFound` and `TopicCreateError`
(pipeline.kafka.admin), `LocalServiceError` (`LocalKafkaError`, `LocalRegistryError`) and `SandboxError`
(pipeline.dev).

Credentials travel as `Secret` and every text that may echo one goes through `Scrubber`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, get_args

Stage = Literal["decode", "validate", "mapping", "delivery"]
STAGES: tuple[Stage, ...] = get_args(Stage)


class Outcome(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"


def utc_iso(epoch: float) -> str:
    """Epoch seconds as the ISO-8601 UTC form used in dead-letter headers and attempt histories."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PipelineError(Exception):
    """An error the user can act on: the CLI prints its message (never a traceback) and exits 2."""


class Secret:
    """A credential that never prints: repr, str and f-strings all show a redaction."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class Scrubber:
    """Removes credentials from text bound for logs, errors or dead-letter headers: the known secret values,
    and any ``token=``/``org_token=`` query value (HTTP libraries put whole URLs into their messages).

    A secret is masked where it stands whole, not inside a longer run of letters and digits: a short token
    ``tok`` leaves "org token" alone. Text this scrubs is often already escaped (JSON log lines, byte reprs,
    URL-encoded values), so a secret right after an escape such as ``\\n``, ``\\x00``, ``\\u0022`` or ``%3D``
    stands whole too: the escape's letters and digits are not part of it."""

    _SECRET_QUERY = re.compile(r"((?:^|[?&;\s])(?:org_token|token)=)[^&\s'\"]*", re.IGNORECASE)
    _ALNUM = r"[^\W_]"
    # where a secret may start although a letter or digit precedes it: right after an escape sequence
    _AFTER_ESCAPE = (r"(?<=\\[abfnrtv0])", r"(?<=\\x[0-9A-Fa-f]{2})", r"(?<=\\u[0-9A-Fa-f]{4})",
                     r"(?<=%[0-9A-Fa-f]{2})")

    def __init__(self, secrets: Iterable[Secret]) -> None:
        values = sorted({secret.reveal() for secret in secrets if secret}, key=len, reverse=True)  # longest wins
        self._secrets = re.compile("|".join(self._whole(value) for value in values)) if values else None

    @classmethod
    def _whole(cls, value: str) -> str:
        """A pattern for `value` where no letter or digit continues it on either side (an edge of `value` that is
        not a letter or digit needs no such guard: the run ends there anyway)."""
        start = f"(?:(?<!{cls._ALNUM})|{'|'.join(cls._AFTER_ESCAPE)})" if value[0].isalnum() else ""
        end = f"(?!{cls._ALNUM})" if value[-1].isalnum() else ""
        return f"{start}{re.escape(value)}{end}"

    def __call__(self, text: str) -> str:
        text = self._SECRET_QUERY.sub(r"\1***", text)
        return self._secrets.sub("***", text) if self._secrets else text


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot be delivered. Its fields become the dead-letter context headers.

    `field` is a path such as ``properties.products[2].price``; `expected` and `found` are short,
    already truncated descriptions, never whole payloads.
    """

    stage: Stage
    error_class: str
    reason: str
    field: str = ""
    expected: str = ""
    found: str = ""
    http_status: int | None = None

    @property
    def message(self) -> str:
        parts = [self.reason]
        if self.field:
            parts.append(f"at {self.field}")
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.found:
            parts.append(f"found {self.found}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class WigzoRequest:
    """One fully formed HTTP call to Wigzo, relative to the configured base URL.

    `query` carries the auth tokens as Wigzo expects them; use `redacted_query` for display.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    SECRET_PARAMS = frozenset({"token", "org_token"})

    def redacted_query(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, "***" if k in self.SECRET_PARAMS else v) for k, v in self.query)


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send these requests, in order: the event is delivered once Wigzo accepted every one."""

    requests: tuple[WigzoRequest, ...]


@dataclass(frozen=True, slots=True)
class Skip:
    """Not sent on purpose (Wigzo disabled for the event, or a call type Wigzo does not take)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """Wigzo answered 2xx (`status`) after `attempts` tries."""

    status: int
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejection on its way to the dead-letter topic, with how often and when it failed."""

    rejection: Rejection
    attempts: int
    first_failure: float  # epoch seconds
    last_failure: float
    history: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryFailed(DeadLetter):
    """Permanent for this event: the dead letter delivery gives up with, sent to the dead-letter topic as it is."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """Stopped before an outcome was known: the offset must not be committed."""

    attempts: int


MappingDecision = Deliver | Skip | Rejection  # what the chain (pipeline.wigzo.chain) decides for an event
DeliveryResult = Delivered | DeliveryFailed | Aborted  # how one event's delivery ended


@dataclass(frozen=True, slots=True)
class Wait:
    """Work not finished yet: step it again after `seconds`, or as soon as one of `wake` is set (delivery
    resumed for everyone, the partition stopped). Whoever runs the steps waits without holding a thread."""

    seconds: float
    wake: tuple[threading.Event, ...] = ()


