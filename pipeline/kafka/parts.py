"""The parts a pipeline is given, as the consume loop sees them: `pipeline.kafka.runner` builds the real ones
from settings (decoder, chain, Wigzo client, dead-letter writer, executor), tests pass fakes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Message

from pipeline.config import Settings
from pipeline.contract.decoder import SchemaNeeded
from pipeline.kafka.executor import Sender
from pipeline.model import DeadLetter, MappingDecision, Rejection, Wait


REGISTRY_PATIENCE = 120.0  # well under max.poll.interval.ms (300 s), as the decoder's retries once were


class Decoder(Protocol):
    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection | SchemaNeeded: ...


class Schemas(Protocol):
    """Resolves the schema ids the decoder needs, off the loop (pipeline.contract.registry.SchemaLookups)."""

    def want(self, schema_id: int) -> None: ...
    def resolved(self) -> list[int]: ...
    def problem(self) -> str: ...
    def failing_for(self) -> float: ...


class Client(Sender[Any], Protocol):
    """Sends requests (pipeline.wigzo.client.WigzoClient), and says when delivery is paused for everyone."""

    def accepting_work(self) -> bool: ...
    def close(self) -> None: ...

    @property
    def state(self) -> str: ...

    @property
    def problem(self) -> str:
        """Why delivery is paused (what to fix), or empty."""


class DeadLetterSink(Protocol):
    """Writes dead letters (pipeline.kafka.dead_letters.DeadLetterWriter); `poll` hands back the tickets of the
    letters the broker acknowledged."""

    failure: Exception | None

    def write(self, record: Message, letter: DeadLetter, ticket: Any) -> None: ...
    def poll(self) -> list[Any]: ...
    def flush(self, timeout: float) -> bool: ...


class Executor(Protocol):
    def submit(self, key: Hashable | None, task: Callable[[], Wait | None]) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Parts:
    decoder: Decoder
    schemas: Schemas
    decide: Callable[[dict[str, Any]], MappingDecision]  # pipeline.wigzo.chain.Chain.decide
    client: Client
    dead_letters: DeadLetterSink
    executor: Executor
    shutdown: threading.Event  # set to stop: ends the loop, and any wait a part is in (the decoder's patience)


@dataclass(frozen=True, slots=True)
class Flow:
    """How work flows, from settings: per-key ordering, the window of unfinished messages per partition and the
    member's window in bytes (pipeline.kafka.ledger), how long a release may wait for deliveries already on the
    wire (connect + read timeout), and how many events in a row the mapping may reject the same way before the
    rest are held (pipeline.kafka.mapping_streak); and how long a batch run (or replay, redrive) waits for a
    schema registry that does not answer before it gives up with a non-zero exit (a long-running member never
    gives up: what needs the registry waits, the rest flows)."""

    ordering: str
    max_pending_per_partition: int
    window_bytes: int
    drain_bound: float
    systemic_threshold: int
    registry_patience: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Flow:
        return cls(ordering=settings.ordering, max_pending_per_partition=settings.max_pending_per_partition,
                   window_bytes=settings.pending_window_bytes(),
                   drain_bound=settings.connect_timeout + settings.read_timeout + 1.0,
                   systemic_threshold=settings.systemic_failure_threshold, registry_patience=REGISTRY_PATIENCE)
