"""The parts a pipeline is given, as the consume loop sees them: `pipeline.kafka.runner` builds the real ones
from settings (decoder, the destinations with their chains and Wigzo clients, dead-letter writer, executor), tests
pass fakes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import Message

from pipeline.config import ConfigError, Settings, route
from pipeline.contract.decoder import SchemaNeeded
from pipeline.kafka.executor import Sender
from pipeline.kafka.ledger import PartitionKey
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


class Destination(Protocol):
    """One Wigzo destination as the loop sees it (pipeline.wigzo.destination.Destination): its name, the chain
    that decides for its events (pipeline.wigzo.chain.Chain.decide) and its own client."""

    @property
    def name(self) -> str: ...

    @property
    def client(self) -> Client: ...

    def decide(self, event: dict[str, Any]) -> MappingDecision: ...


D = TypeVar("D", bound=Destination)


class Destinations(Generic[D]):
    """Which destination a topic's events go to. One destination takes every topic (replay and redrive may read
    others); several own theirs, by name or `^pattern` (pipeline.config.route). Used from the polling thread."""

    def __init__(self, owners: Sequence[tuple[D, Sequence[str]]]) -> None:
        self._all = [destination for destination, _ in owners]
        self._by_name = {destination.name: destination for destination in self._all}
        self._owners = [(destination.name, topics) for destination, topics in owners]
        self._by_topic: dict[str, D] = {}

    @classmethod
    def one(cls, destination: D) -> Destinations[D]:
        return cls([(destination, ())])

    def __iter__(self) -> Iterator[D]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def for_topic(self, topic: str) -> D:
        """ConfigError when no destination owns the topic, or two patterns both match it."""
        found = self._by_topic.get(topic)
        if found is None:
            found = self._all[0] if len(self._all) == 1 else self._by_name[route(topic, self._owners)]
            self._by_topic[topic] = found
        return found

    def for_name(self, name: str) -> D:
        return self._by_name[name]

    def name_for(self, topic: str) -> str:
        return self.for_topic(topic).name

    def accepting(self) -> Callable[[PartitionKey], bool]:
        """Which partitions' destinations take work, as of now (each client asked once). A partition of a topic
        no destination owns (redrive reads dead-letter topics) takes work while every destination does."""
        accepting = {destination.name: destination.client.accepting_work() for destination in self._all}
        everyone = all(accepting.values())

        def of(key: PartitionKey) -> bool:
            try:
                return accepting[self.for_topic(key[0]).name]
            except ConfigError:
                return everyone

        return of


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


class Reload(Protocol):
    """Settings changed while running (pipeline.live.LiveSettings): applied on the polling thread, between polls,
    so an event is decided with the settings in force when it was read."""

    def poll(self) -> None:
        """Reload now if asked to, or if a file the settings were read from changed."""

    def request(self) -> None:
        """Reload at the next poll (SIGHUP)."""


@dataclass(frozen=True, slots=True)
class Parts:
    decoder: Decoder
    schemas: Schemas
    destinations: Destinations[Any]
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
