"""Fakes of the consume loop's parts (pipeline.kafka.parts) and of its consumer: no broker, no sockets.

A scripted consumer feeds messages and fires rebalance callbacks from inside `consume`, as librdkafka does;
the Wigzo client blocks each delivery until the test releases it; the dead-letter sink acknowledges on
`poll`/`flush` unless told to hold. A `Journal` records what they saw, in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from pipeline.contract.decoder import SchemaNeeded
from pipeline.kafka.ledger import PartitionKey
from pipeline.model import (
    Aborted,
    DeadLetter,
    Deliver,
    Delivered,
    DeliveryResult,
    MappingDecision,
    Rejection,
    Skip,
    WigzoRequest,
)

WAIT = 3.0  # upper bound for anything the pipeline is expected to do; passing runs take milliseconds


def event_id(key: PartitionKey, offset: int) -> str:
    return f"{key[1]}:{offset}"


def message(key: PartitionKey, offset: int, action: str = "deliver", *, value: bytes | None = b"",
            record_key: bytes | None = None) -> Message:
    """A consumed message; by default a JSON event whose `action` tells the fake mapping what to decide.
    Each message gets its own Kafka key, so deliveries run in parallel unless a test says otherwise."""
    if value == b"":
        value = orjson.dumps({"id": event_id(key, offset), "action": action})
    return Message(topic=key[0], partition=key[1], offset=offset, key=record_key or f"user-{key[1]}-{offset}".encode(),
                   value=value, headers=None, timestamp=(1, 1_700_000_000_000))


class Journal:
    """One ordered record of what the fakes saw, shared so tests can check what happened before what."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[Any, ...]] = []

    def add(self, *entry: Any) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._entries)


class FakeConsumer:
    """Returns fed messages from partitions that are not paused; runs scheduled rebalance callbacks inside
    `consume`. It does not filter by assignment, so stragglers of revoked partitions still arrive."""

    def __init__(self, journal: Journal, group: list[PartitionKey]) -> None:
        self._journal = journal
        self._group = group
        self._lock = threading.Lock()
        self._backlog: list[Message] = []
        self._actions: list[Callable[[], None]] = []
        self._callbacks: dict[str, Callable[[Any, list[TopicPartition]], None]] = {}
        self.callback_running: str | None = None
        self.topics: list[str] = []
        self.commits: list[dict[PartitionKey, int]] = []
        self.paused: set[PartitionKey] = set()
        self.pause_calls: list[list[PartitionKey]] = []
        self.resume_calls: list[list[PartitionKey]] = []
        self.assigned_partitions: list[tuple[str, int, int]] = []
        self.positions: dict[PartitionKey, int] = {}
        self.consume_calls = 0
        self.on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] = lambda error, offsets: None
        self.refuse_commits: KafkaError | None = None

    # what the pipeline calls

    def subscribe(self, topics: list[str], on_assign: Callable[..., None], on_revoke: Callable[..., None],
                  on_lost: Callable[..., None]) -> None:
        self.topics = list(topics)
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.rebalance("assign", self._group)

    def assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned_partitions.append((tp.topic, tp.partition, tp.offset))
            self.positions[(tp.topic, tp.partition)] = tp.offset

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        with self._lock:
            self.consume_calls += 1
            actions, self._actions = self._actions, []
        for action in actions:
            action()
        with self._lock:
            batch: list[Message] = []
            rest: list[Message] = []
            for m in self._backlog:
                key = (m.topic(), m.partition())
                (batch if len(batch) < num_messages and key not in self.paused else rest).append(m)
            self._backlog = rest
            for m in batch:
                if m.error() is None:
                    self.positions[(m.topic(), m.partition())] = m.offset() + 1
        if not batch:
            time.sleep(0.001)  # an idle poll
        return batch

    def commit(self, message: Message | None = None, offsets: list[TopicPartition] | None = None,
               asynchronous: bool = True) -> list[TopicPartition] | None:
        """Synchronous commits return; asynchronous ones are answered (on_commit) inside the next `consume`,
        as librdkafka does. `refuse_commits` makes the broker refuse them."""
        assert message is None and offsets is not None
        positions = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        refusal = self.refuse_commits
        if refusal is not None and not asynchronous:
            raise KafkaException(refusal)
        if refusal is None:
            with self._lock:
                self.commits.append(positions)
            self._journal.add("commit", positions, self.callback_running)
        if not asynchronous:
            return offsets
        answered = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]
        with self._lock:
            self._actions.append(lambda: self.on_commit(refusal, answered))
        return None

    def pause(self, partitions: list[TopicPartition]) -> None:
        keys = sorted((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self.paused.update(keys)
            self.pause_calls.append(keys)

    def resume(self, partitions: list[TopicPartition]) -> None:
        keys = sorted((tp.topic, tp.partition) for tp in partitions)
        with self._lock:
            self.paused.difference_update(keys)
            self.resume_calls.append(keys)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        with self._lock:
            return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
                    for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        key = (partition.topic, partition.partition)
        with self._lock:
            ends = [m.offset() + 1 for m in self._backlog if m.error() is None and (m.topic(), m.partition()) == key]
            return 0, max([self.positions.get(key, 0), *ends])

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.last_commit((tp.topic, tp.partition)) or -1001)
                for tp in partitions]

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        return object()

    # what tests call

    def feed(self, *messages: Message) -> None:
        with self._lock:
            self._backlog.extend(messages)

    def rebalance(self, kind: str, keys: list[PartitionKey],
                  before: Callable[[], None] | None = None) -> threading.Event:
        """Fire on_assign/on_revoke/on_lost from inside the next `consume`; the event is set once it returned."""
        done = threading.Event()

        def action() -> None:
            self._journal.add(kind, list(keys))
            if before is not None:
                before()
            self.callback_running = kind
            try:
                self._callbacks[kind](self, [TopicPartition(t, p) for t, p in keys])
            finally:
                self.callback_running = None
                self._journal.add(f"{kind} done", list(keys))
                done.set()

        with self._lock:
            self._actions.append(action)
        return done

    def commits_for(self, key: PartitionKey) -> list[int]:
        with self._lock:
            return [c[key] for c in self.commits if key in c]

    def last_commit(self, key: PartitionKey) -> int | None:
        positions = self.commits_for(key)
        return positions[-1] if positions else None


class FakeDecoder:
    """JSON objects decode; anything else (including a tombstone) is a decode Rejection. An event with a
    `schema` field stands for a registry-framed message: it needs that schema id until it is in `known`."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.known: set[int] = set()

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection | SchemaNeeded:
        if value is not None and value.startswith(b'{"schema":'):
            schema_id = orjson.loads(value)["schema"]
            if schema_id not in self.known:
                return SchemaNeeded(schema_id)
        try:
            event = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError as exc:
            self.seen.append(f"<not json: {value!r}>")
            return Rejection("decode", "InvalidJson", str(exc))
        if not isinstance(event, dict):
            self.seen.append(f"<not an object: {value!r}>")
            return Rejection("decode", "NotAnObject", "the value is not a JSON object", found=type(event).__name__)
        self.seen.append(event["id"])
        return event


class FakeSchemas:
    """The registry lookups: `answer` an id (it joins the decoder's known ids), or make the registry `fail`."""

    def __init__(self, decoder: FakeDecoder) -> None:
        self._decoder = decoder
        self._lock = threading.Lock()
        self._answered: list[int] = []
        self.wanted: list[int] = []
        self.failing_since: float | None = None
        self.clock: Callable[[], float] = time.monotonic

    def want(self, schema_id: int) -> None:
        with self._lock:
            self.wanted.append(schema_id)

    def answer(self, schema_id: int) -> None:
        with self._lock:
            self._decoder.known.add(schema_id)
            self._answered.append(schema_id)
        self.failing_since = None

    def resolved(self) -> list[int]:
        with self._lock:
            answered, self._answered = self._answered, []
        return answered

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else self.clock() - self.failing_since

    def problem(self) -> str:
        return "" if self.failing_since is None else "schema registry at http://registry: no answer"


def map_event(event: dict[str, Any]) -> MappingDecision:
    action = event["action"]
    if action == "skip":
        return Skip("wigzo disabled for this event")
    if action == "reject":
        return Rejection("mapping", "Unmappable", "no Wigzo call for this event", field="event")
    if action == "reject-other":
        return Rejection("mapping", "Unmappable", "no Wigzo call for this event", field="other")
    if action == "crash":
        raise ValueError("mapping bug")
    return Deliver((WigzoRequest("POST", "/learn/event", (("token", "t"),), {"id": event["id"]}),))


class FakeClient:
    """Delivers instantly unless the request's event is held: then `deliver` blocks until released (or until
    `stop` is set, answering Aborted as the real client does). `results` overrides what a delivery returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self.results: dict[str, DeliveryResult | Exception] = {}
        self.started: list[str] = []
        self.delivered: list[str] = []
        self.accepting = True
        self.closed = False

    def hold(self, *ids: str) -> None:
        for id_ in ids:
            self._gates[id_] = threading.Event()

    def release(self, *ids: str) -> None:
        for id_ in ids:
            self._gates[id_].set()

    def release_all(self) -> None:
        for gate in list(self._gates.values()):
            gate.set()

    def deliver(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        id_ = request.body["id"]
        with self._lock:
            self.started.append(id_)
        gate = self._gates.get(id_)
        if gate is not None:
            deadline = time.monotonic() + 2 * WAIT
            while not gate.wait(0.002):
                if stop.is_set() or time.monotonic() > deadline:
                    return Aborted(attempts=1)
        result = self.results.get(id_, Delivered(200, attempts=1))
        if isinstance(result, Exception):
            raise result
        if isinstance(result, Delivered):
            with self._lock:
                self.delivered.append(id_)
        return result

    def start(self, request: WigzoRequest) -> WigzoRequest:
        return request

    def attempt(self, request: WigzoRequest, stop: threading.Event) -> DeliveryResult:
        """The whole delivery in one try, blocking as `deliver` does."""
        return self.deliver(request, stop)

    def accepting_work(self) -> bool:
        return self.accepting

    @property
    def state(self) -> str:
        return "healthy" if self.accepting else "circuit open"

    @property
    def problem(self) -> str:
        return "" if self.accepting else "Wigzo is failing"

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDestination:
    """A destination of fake parts: the test's mapping and client under a name."""

    name: str
    decide: Callable[[dict[str, Any]], MappingDecision]
    client: FakeClient


class FakeDeadLetters:
    """Records letters; acknowledges them from `poll`/`flush` (their tickets come back from the next `poll`),
    unless holding until `release_acks()`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.failure: Exception | None = None
        self.letters: list[tuple[Message, DeadLetter]] = []
        self._unacked: list[tuple[Message, Any]] = []
        self._acked: list[Any] = []
        self.holding = False
        self._acks_released = threading.Event()
        self.flush_patience = WAIT  # how long a held flush waits for acknowledgements (the real one: 30 s)

    def write(self, record: Message, letter: DeadLetter, ticket: Any) -> None:
        self.letters.append((record, letter))
        self._unacked.append((record, ticket))

    def release_acks(self) -> None:
        self._acks_released.set()

    def poll(self) -> list[Any]:
        if not self.holding or self._acks_released.is_set():
            self._acknowledge()
        acked, self._acked = self._acked, []
        return acked

    def flush(self, timeout: float) -> bool:
        if self.holding and not self._acks_released.wait(min(timeout, self.flush_patience)):
            return False
        self._acknowledge()
        return True

    def _acknowledge(self) -> None:
        acked, self._unacked = self._unacked, []
        for record, ticket in acked:
            self._journal.add("ack", (record.topic(), record.partition()), record.offset())
            self._acked.append(ticket)

    def stages(self) -> dict[tuple[int, int], str]:
        return {(r.partition(), r.offset()): letter.rejection.stage for r, letter in self.letters}
