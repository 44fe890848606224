"""The values that pass between the pipeline's stages.

Decoding, mapping and delivery each return one of these instead of raising, so the consumer
loop can route every message to exactly one outcome without try/except around the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Stage = Literal["decode", "validate", "mapping", "delivery"]


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
    requests: tuple[WigzoRequest, ...]


@dataclass(frozen=True, slots=True)
class Skip:
    """Not sent on purpose (Wigzo disabled for the event, or a call type Wigzo does not take)."""

    reason: str


MappingDecision = Deliver | Skip | Rejection
