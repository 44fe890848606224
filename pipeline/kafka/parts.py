"""The parts a pipeline is given, as the consume loop sees them: `pipeline.kafka.runner` builds the real ones
from settings (decoder, chain, Wigzo client, dead-letter writer, executor), tests pass fakes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Message

from pipeline.config import Settings
from pipeline.kafka.executor import Sender
from pipeline.model import DeadLetter, MappingDecision, Rejection, Wait


class Decoder(Protocol):
    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection: ...


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
    decide: Callable[[dict[str, Any]], MappingDecision]  # pipeline.wigzo.chain.Chain.decide
    client: Client
    dead_letters: DeadLetterSink
    executor: Executor
    shutdown: threading.Event  # set to stop: ends the loop, and any wait a part is in (the decoder's patience)


@dataclass(frozen=True, slots=True)
class Flow:
    """How work flows, from settings: per-key ordering, the window of unfinished messages per partition, how
    long a release may wait for deliveries already on the wire (connect + read timeout), and how many events in
    a row the mapping may reject the same way before the rest are held (pipeline.kafka.mapping_streak)."""

    ordering: str
    max_pending_per_partition: int
    drain_bound: float
    systemic_threshold: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Flow:
        return cls(ordering=settings.ordering, max_pending_per_partition=settings.max_pending_per_partition,
                   drain_bound=settings.connect_timeout + settings.read_timeout + 1.0,
                   systemic_threshold=settings.systemic_failure_threshold)
