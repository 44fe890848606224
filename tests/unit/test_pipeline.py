"""`Pipeline` with fake parts: no broker, no sockets.

A scripted consumer feeds messages and fires rebalance callbacks from inside `consume`, as librdkafka does;
the Wigzo client blocks each delivery until the test releases it; the dead-letter sink acknowledges on
`poll`/`flush` unless told to hold. Executors are the real `OrderedExecutor`. Every test drives the pipeline
through `run` on a thread, with bounded waits on what it has visibly done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

import pipeline.kafka.pipeline as pipeline_module
from pipeline.contract.decoder import SchemaRegistryUnavailable
from pipeline.kafka.assignment import Assignment, GroupSubscription, OffsetRanges
from pipeline.kafka.checkpoint import PartitionKey
from pipeline.kafka.executor import OrderedExecutor
from pipeline.kafka.pipeline import Flow, Parts, Pipeline
from pipeline.model import (
    Aborted,
    DeadLetter,
    Deliver,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    MappingDecision,
    Outcome,
    PipelineError,
    Rejection,
    Skip,
    WigzoRequest,
)

TOPIC = "events"
P0: PartitionKey = (TOPIC, 0)
P1: PartitionKey = (TOPIC, 1)
WAIT = 3.0  # upper bound for anything the pipeline is expected to do; passing runs take milliseconds


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


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


# ---- fakes --------------------------------------------------------------------------------------


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
               asynchronous: bool = True) -> list[TopicPartition]:
        assert message is None and offsets is not None
        assert asynchronous is False, "commits must be synchronous"
        positions = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        with self._lock:
            self.commits.append(positions)
        self._journal.add("commit", positions, self.callback_running)
        return offsets

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
    """JSON objects decode; anything else (including a tombstone) is a decode Rejection."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.registry_down = False

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection:
        if self.registry_down:
            raise SchemaRegistryUnavailable("schema registry unreachable")
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


class BlockingDelivery:
    """The whole delivery in one step, blocking as FakeClient.deliver does."""

    def __init__(self, client: FakeClient, request: WigzoRequest) -> None:
        self._client, self._request = client, request

    def step(self, stop: threading.Event) -> DeliveryResult:
        return self._client.deliver(self._request, stop)


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

    def delivery(self, request: WigzoRequest) -> BlockingDelivery:
        return BlockingDelivery(self, request)

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


class FakeDeadLetters:
    """Records letters; acknowledges them from `poll`/`flush`, unless holding until `release_acks()`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.failure: Exception | None = None
        self.letters: list[tuple[Message, DeadLetter]] = []
        self._unacked: list[tuple[Message, Callable[[], None]]] = []
        self.holding = False
        self._acks_released = threading.Event()
        self.flush_patience = WAIT  # how long a held flush waits for acknowledgements (the real one: 30 s)

    def write(self, record: Message, letter: DeadLetter, on_durable: Callable[[], None]) -> None:
        self.letters.append((record, letter))
        self._unacked.append((record, on_durable))

    def release_acks(self) -> None:
        self._acks_released.set()

    def poll(self) -> None:
        if not self.holding or self._acks_released.is_set():
            self._acknowledge()

    def flush(self, timeout: float) -> bool:
        if self.holding and not self._acks_released.wait(min(timeout, self.flush_patience)):
            return False
        self._acknowledge()
        return True

    def _acknowledge(self) -> None:
        acked, self._unacked = self._unacked, []
        for record, on_durable in acked:
            self._journal.add("ack", (record.topic(), record.partition()), record.offset())
            on_durable()

    def stages(self) -> dict[tuple[int, int], str]:
        return {(r.partition(), r.offset()): letter.rejection.stage for r, letter in self.letters}


class Harness:
    def __init__(self, group: list[PartitionKey]) -> None:
        self.journal = Journal()
        self.consumer = FakeConsumer(self.journal, group)
        self.decoder = FakeDecoder()
        self.client = FakeClient()
        self.dead_letters = FakeDeadLetters(self.journal)
        self.mapped: list[str] = []
        self.pipeline: Pipeline | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.observed: list[tuple[int, int, bool]] = []  # (read, outstanding, finished) after each loop

    def map_event(self, event: dict[str, Any]) -> MappingDecision:
        self.mapped.append(event["id"])
        return map_event(event)

    def build(self, assignment: Assignment | None = None, *, flow: Flow = Flow(drain_bound=WAIT),
              commit: bool = True, reader: Callable[[Message], Message | Skip] | None = None,
              clock: Callable[[], float] = time.monotonic) -> Pipeline:
        parts = Parts(decoder=self.decoder, map_event=self.map_event, client=self.client,
                      dead_letters=self.dead_letters, executor=OrderedExecutor(4, name="test-deliver"))
        self.pipeline = Pipeline(parts, assignment or GroupSubscription((TOPIC,), ""), flow=flow, reader=reader,
                                 commit=commit, clock=clock, wall_clock=lambda: 1_700_000_000.0)
        return self.pipeline

    def start(self, pipeline: Pipeline, stop_when: Callable[[], bool] | None = None) -> None:
        def observe() -> bool:
            finished = pipeline.finished()
            self.observed.append((pipeline.stats.read, pipeline.outstanding(), finished))
            return stop_when is not None and stop_when()

        def run() -> None:
            try:
                pipeline.run(self.consumer, stop_when=observe)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                self.error = exc

        self.thread = threading.Thread(target=run, name="test-pipeline", daemon=True)
        self.thread.start()

    def loops(self, count: int = 5) -> None:
        """Let the polling loop go round `count` more times."""
        target = self.consumer.consume_calls + count
        wait_for(lambda: self.consumer.consume_calls >= target, f"{count} more polls")

    def join(self, timeout: float = WAIT) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipeline did not stop"

    def stop(self) -> None:
        assert self.pipeline is not None
        self.pipeline.request_shutdown()
        self.join()
        if self.error is not None:
            raise self.error

    def outcomes(self) -> dict[tuple[Outcome, str], int]:
        assert self.pipeline is not None
        return self.pipeline.outcomes.by_detail()


@pytest.fixture
def make_harness() -> Iterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []

    def make(group: list[PartitionKey] | None = None) -> Harness:
        harness = Harness([P0] if group is None else group)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:  # a failed test must not leave a pipeline thread behind
        harness.client.release_all()
        harness.dead_letters.release_acks()
        if harness.pipeline is not None and harness.thread is not None:
            harness.pipeline.request_shutdown()
            harness.thread.join(2 * WAIT)


@pytest.fixture
def commit_every_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit whatever is due on every pass of the loop, so tests see every position the pipeline would commit."""
    monkeypatch.setattr(pipeline_module, "COMMIT_INTERVAL", 0.0)


def frozen_clock() -> float:
    """Time stands still: no periodic commits at all, so only releases commit."""
    return 0.0


# ---- commits ------------------------------------------------------------------------------------


def test_commit_never_passes_an_unfinished_offset(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.client.hold("0:3", "0:7")
    h.consumer.feed(*(message(P0, n) for n in range(10)))
    pipeline = h.build()
    h.start(pipeline)

    wait_for(lambda: len(h.client.delivered) == 8, "everything but 3 and 7 delivered")
    wait_for(lambda: h.consumer.last_commit(P0) == 3, "a commit up to 3")
    h.loops()
    assert max(h.consumer.commits_for(P0)) == 3

    h.journal.add("release", "0:3")
    h.client.release("0:3")
    wait_for(lambda: h.consumer.last_commit(P0) == 7, "a commit up to 7")
    h.loops()
    assert max(h.consumer.commits_for(P0)) == 7

    h.journal.add("release", "0:7")
    h.client.release("0:7")
    wait_for(lambda: h.consumer.last_commit(P0) == 10, "a commit up to 10")
    h.stop()

    limit, seen = 3, []
    for entry in h.journal.entries():
        if entry[0] == "release":
            limit = {"0:3": 7, "0:7": 10}[entry[1]]
        elif entry[0] == "commit" and P0 in entry[1]:
            assert entry[1][P0] <= limit, f"committed {entry[1][P0]} past an unfinished offset ({limit})"
            seen.append(entry[1][P0])
    assert seen == sorted(set(seen)), "each commit moves forward, none is repeated"
    assert seen[-1] == 10
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 10}
    assert h.client.closed


def test_periodic_commits_wait_for_the_commit_interval(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.consumer.feed(*(message(P0, n) for n in range(3)))
    pipeline = h.build(clock=frozen_clock)
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 3, "three deliveries")
    h.loops(20)
    assert h.consumer.commits == [], "no time has passed, so no periodic commit"
    h.stop()
    assert h.consumer.commits == [{P0: 3}], "shutdown commits once"


def test_replay_without_commit_never_commits(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.consumer.feed(message(P0, 0), message(P0, 1, value=b"not json"), message(P1, 0), message(P1, 1, "skip"))
    pipeline = h.build(commit=False)
    h.start(pipeline)
    wait_for(lambda: pipeline.outcomes.total() == 4, "four outcomes")
    h.loops()
    assert h.consumer.rebalance("revoke", [P0]).wait(WAIT)
    h.stop()
    assert h.consumer.commits == []
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.SKIPPED, "wigzo disabled for this event"): 1,
                            (Outcome.DEAD_LETTERED, "decode"): 1}


# ---- rebalances ---------------------------------------------------------------------------------


def test_revoke_drains_in_flight_deliveries_then_commits_past_them(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.client.hold("0:2", "0:4")
    h.consumer.feed(*(message(P0, n) for n in range(5)))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 3, "0, 1 and 3 delivered")
    wait_for(lambda: h.consumer.last_commit(P0) == 2, "a commit up to 2")

    def release_soon() -> None:  # from another thread, while the revoke waits
        threading.Timer(0.05, lambda: (h.journal.add("release"), h.client.release("0:2", "0:4"))).start()

    revoked = h.consumer.rebalance("revoke", [P0], before=release_soon)
    assert revoked.wait(WAIT)
    # stragglers of the revoked partition (already fetched) and new work for the partition we keep
    h.consumer.feed(message(P0, 5), message(P0, 6), message(P1, 0))
    wait_for(lambda: "1:0" in h.client.delivered, "1:0 delivered")
    h.stop()

    entries = h.journal.entries()
    start, end = entries.index(("revoke", [P0])), entries.index(("revoke done", [P0]))
    assert entries[start + 1:end] == [("release",), ("commit", {P0: 5}, "revoke")], \
        "the revoke waited for the in-flight deliveries, then committed past them"
    assert all(P0 not in e[1] for e in entries[end:] if e[0] == "commit"), "nothing committed for P0 after release"
    assert h.consumer.last_commit(P1) == 1
    assert "0:5" not in h.decoder.seen and "0:6" not in h.decoder.seen
    assert sorted(h.client.started) == ["0:0", "0:1", "0:2", "0:3", "0:4", "1:0"]
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 6}
    assert (pipeline.stats.duplicate_risk, pipeline.stats.aborted) == (0, 0)


def test_revoke_commits_only_after_its_dead_letters_are_acknowledged(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.dead_letters.holding = True
    h.consumer.feed(message(P0, 0), message(P0, 1, value=b"{broken"), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2 and len(h.dead_letters.letters) == 1, "2 delivered, 1 dead letter")
    wait_for(lambda: h.consumer.last_commit(P0) == 1, "a commit up to 1")
    h.loops()
    assert h.consumer.commits_for(P0) == [1], "the unacknowledged dead letter at 1 holds the commit back"

    def acknowledge_soon() -> None:  # from another thread, while the revoke waits in flush
        threading.Timer(0.05, h.dead_letters.release_acks).start()

    revoked = h.consumer.rebalance("revoke", [P0], before=acknowledge_soon)
    assert revoked.wait(WAIT)
    h.stop()

    entries = h.journal.entries()
    ack = entries.index(("ack", P0, 1))
    commit = entries.index(("commit", {P0: 3}, "revoke"))
    assert entries.index(("revoke", [P0])) < ack < commit
    assert h.consumer.commits_for(P0) == [1, 3]
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.DEAD_LETTERED, "decode"): 1}


def test_revoke_refuses_to_commit_when_dead_letters_are_never_acknowledged(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.dead_letters.holding = True
    h.dead_letters.flush_patience = 0.05
    h.consumer.feed(message(P0, 0), message(P0, 1, value=b"{broken"), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2 and len(h.dead_letters.letters) == 1, "2 delivered, 1 dead letter")
    wait_for(lambda: h.consumer.last_commit(P0) == 1, "a commit up to 1")
    assert h.consumer.rebalance("revoke", [P0]).wait(WAIT)
    h.join()
    assert isinstance(h.error, PipelineError)
    assert "not committing" in str(h.error)
    assert h.consumer.commits_for(P0) == [1]


def test_a_dead_letter_write_failure_halts_without_committing(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.dead_letters.holding = True
    h.consumer.feed(message(P0, 0), message(P0, 1, value=b"{broken"), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2 and h.consumer.last_commit(P0) == 1, "a commit up to 1")
    failure = PipelineError("the dead-letter topic refused the write")
    h.dead_letters.failure = failure
    h.dead_letters.release_acks()  # too late: the pipeline must stop before acknowledging anything more
    h.join()
    assert h.error is failure
    assert h.consumer.commits_for(P0) == [1]


def test_lost_partitions_commit_nothing(make_harness: Callable[..., Harness]) -> None:
    h = make_harness([P0, P1])
    h.client.hold("0:2")
    h.consumer.feed(*(message(P0, n) for n in range(5)), message(P1, 0), message(P1, 1))
    pipeline = h.build(clock=frozen_clock)  # no periodic commits: 0 and 1 are finished but uncommitted
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 6, "everything but 0:2 delivered")

    lost = h.consumer.rebalance("lost", [P0])
    assert lost.wait(WAIT)
    assert pipeline.stats.aborted == 1, "the delivery in flight was stopped, not waited for"
    h.consumer.feed(message(P0, 5))
    h.loops()
    h.stop()

    assert h.consumer.commits == [{P1: 2}], "only the partition still owned is committed, at shutdown"
    assert "0:5" not in h.decoder.seen
    assert "0:2" not in h.client.delivered
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 6}


def test_a_partition_assigned_again_starts_fresh(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.consumer.feed(message(P0, 0), message(P0, 1))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: h.consumer.last_commit(P0) == 2, "a commit up to 2")
    assert h.consumer.rebalance("revoke", [P0]).wait(WAIT)
    assert h.consumer.rebalance("assign", [P0]).wait(WAIT)
    h.consumer.feed(message(P0, 2))  # back where we committed
    wait_for(lambda: h.consumer.commits_for(P0)[-1:] == [3], "a commit up to 3")
    assert h.consumer.rebalance("revoke", [P0]).wait(WAIT)
    assert h.consumer.rebalance("assign", [P0]).wait(WAIT)
    h.consumer.feed(message(P0, 0))  # the group's offsets were reset meanwhile: 1 is news, though 3 was committed
    wait_for(lambda: h.consumer.commits_for(P0)[-1:] == [1], "position 1 committed again after re-assignment")
    h.stop()
    positions = h.consumer.commits_for(P0)
    assert positions[positions.index(2):] == [2, 3, 1], "the first assignment's commits, the second's, the third's"


# ---- outcomes -----------------------------------------------------------------------------------


def test_every_message_gets_exactly_one_outcome(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.client.results["0:5"] = RuntimeError("client bug")
    h.consumer.feed(
        message(P0, 0),                     # delivered
        message(P0, 1, "skip"),             # skipped by the mapping
        message(P0, 2, value=b"{not json"),  # rejected at decode
        message(P0, 3, "reject"),           # rejected by the mapping
        message(P0, 4, "crash"),            # the mapping raised
        message(P0, 5),                     # delivery raised
        message(P0, 6),                     # delivered
        message(P0, 7, value=None),         # a tombstone: rejected at decode
        message(P0, 8, value=b"[1, 2]"),    # JSON, but not an object: rejected at decode
    )
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: h.consumer.last_commit(P0) == 9, "a commit up to 9")
    h.stop()

    assert pipeline.outcomes.totals() == {Outcome.DELIVERED: 2, Outcome.SKIPPED: 1, Outcome.DEAD_LETTERED: 6}
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.SKIPPED, "wigzo disabled for this event"): 1,
                            (Outcome.DEAD_LETTERED, "decode"): 3, (Outcome.DEAD_LETTERED, "mapping"): 2,
                            (Outcome.DEAD_LETTERED, "delivery"): 1}
    assert pipeline.outcomes.total() == pipeline.stats.read == 9
    assert h.dead_letters.stages() == {(0, 2): "decode", (0, 3): "mapping", (0, 4): "mapping", (0, 5): "delivery",
                                       (0, 7): "decode", (0, 8): "decode"}
    classes = {r.offset(): letter.rejection.error_class for r, letter in h.dead_letters.letters}
    assert (classes[3], classes[4], classes[5]) == ("Unmappable", "MappingCrashed", "DeliveryCrashed")
    assert sorted(h.client.delivered) == ["0:0", "0:6"]
    assert h.mapped == ["0:0", "0:1", "0:3", "0:4", "0:5", "0:6"], "only what decoded reaches the mapping"
    assert len(h.dead_letters.letters) == len({r.offset() for r, _ in h.dead_letters.letters}), "one letter each"
    for _, letter in h.dead_letters.letters:
        assert (letter.attempts, letter.first_failure, letter.last_failure) == (1, 1_700_000_000.0, 1_700_000_000.0)
    assert h.consumer.commits_for(P0)[-1] == 9


def test_a_failed_delivery_is_dead_lettered_with_its_attempts_and_history(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    rejection = Rejection("delivery", "HttpStatus", "Wigzo answered 400", http_status=400)
    history = ("2023-11-14T22:13:20.000Z 503", "2023-11-14T22:13:21.000Z 503", "2023-11-14T22:13:25.000Z 400")
    h.client.results["0:1"] = DeliveryFailed(rejection, attempts=3, first_failure=1_699_999_000.0,
                                             last_failure=1_699_999_005.0, history=history)
    h.consumer.feed(message(P0, 0), message(P0, 1), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: h.consumer.last_commit(P0) == 3, "a commit up to 3")
    h.stop()

    [(record, letter)] = h.dead_letters.letters
    assert (record.partition(), record.offset(), record.key()) == (0, 1, b"user-0-1")
    assert letter == DeadLetter(rejection, 3, 1_699_999_000.0, 1_699_999_005.0, history)
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.DEAD_LETTERED, "delivery"): 1}


def test_an_aborted_delivery_stays_uncommitted(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.client.results["0:1"] = Aborted(attempts=2)
    h.consumer.feed(message(P0, 0), message(P0, 1), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2 and pipeline.stats.aborted == 1, "two delivered, one aborted")
    wait_for(lambda: h.consumer.last_commit(P0) == 1, "a commit up to 1")
    h.loops()
    h.stop()

    assert pipeline.stats.aborted == 1
    assert h.consumer.commits_for(P0) == [1], "never past the aborted offset, not even at shutdown"
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2}, "an aborted message has no outcome yet"
    assert h.observed[-1][:2] == (3, 2), "the aborted message and the one behind it stay outstanding"
    assert h.dead_letters.letters == []


def test_reader_skips_and_substitutes_records(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    """Redrive's reader: the record processed may differ from the one consumed; the consumed offset is committed."""
    h = make_harness()

    def reader(consumed: Message) -> Message | Skip:
        if consumed.offset() == 1:
            return Skip("not selected for redrive")
        return message(("original", 3), 100 + consumed.offset())

    h.consumer.feed(message(P0, 0), message(P0, 1), message(P0, 2))
    pipeline = h.build(reader=reader)
    h.start(pipeline)
    wait_for(lambda: h.consumer.last_commit(P0) == 3, "a commit up to 3")
    h.stop()
    assert sorted(h.client.delivered) == ["3:100", "3:102"]
    assert h.mapped == ["3:100", "3:102"], "the skipped record is neither decoded nor mapped"
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.SKIPPED, "not selected for redrive"): 1}


def test_one_key_is_delivered_in_order(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.client.hold("0:0")
    h.consumer.feed(*(message(P0, n, record_key=b"same-user") for n in range(4)), message(P0, 4))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: h.client.delivered == ["0:4"], "the other user's event delivered")
    h.loops()
    assert sorted(h.client.started) == ["0:0", "0:4"], "the same user's later events wait for the first"
    h.client.release("0:0")
    wait_for(lambda: len(h.client.delivered) == 5, "everything delivered")
    h.stop()
    assert [d for d in h.client.delivered if d != "0:4"] == ["0:0", "0:1", "0:2", "0:3"]


# ---- flow control -------------------------------------------------------------------------------


def test_partitions_are_paused_while_wigzo_is_not_accepting_work(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    pipeline = h.build()
    h.start(pipeline)
    h.loops()
    assert h.consumer.pause_calls == []

    h.client.accepting = False
    wait_for(lambda: h.consumer.paused == {P0, P1}, "both partitions paused")
    h.consumer.feed(message(P0, 0), message(P1, 0))
    h.loops(10)
    assert h.decoder.seen == [] and h.client.started == []

    h.client.accepting = True
    wait_for(lambda: len(h.client.delivered) == 2, "both delivered after resuming")
    h.stop()
    assert h.consumer.pause_calls == [[P0, P1]]
    assert h.consumer.resume_calls == [[P0, P1]]
    assert h.consumer.paused == set()


def test_a_full_window_pauses_its_partition_until_half_of_it_is_finished(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.client.hold("0:0")
    h.consumer.feed(*(message(P0, n) for n in range(6)))
    pipeline = h.build(flow=Flow(max_pending_per_partition=4, drain_bound=WAIT))
    h.start(pipeline)
    wait_for(lambda: h.consumer.paused == {P0}, "P0 paused")
    h.consumer.feed(message(P0, 6), message(P1, 0))
    wait_for(lambda: "1:0" in h.client.delivered, "P1 still flows")
    h.loops()
    assert "0:6" not in h.decoder.seen

    h.client.release("0:0")
    wait_for(lambda: "0:6" in h.client.delivered, "P0 resumed")
    h.stop()
    assert h.consumer.pause_calls == [[P0]]
    assert h.consumer.resume_calls[0] == [P0]
    assert h.consumer.commits_for(P0)[-1] == 7


def test_a_revoked_paused_partition_is_resumed_before_it_goes(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    """librdkafka keeps the pause flag across unassign/assign: a partition we get back must not stay paused."""
    h = make_harness([P0, P1])
    pipeline = h.build()
    h.start(pipeline)
    h.client.accepting = False
    wait_for(lambda: h.consumer.paused == {P0, P1}, "both partitions paused")
    assert h.consumer.rebalance("revoke", [P0]).wait(WAIT)
    assert h.consumer.paused == {P1}
    h.client.accepting = True
    wait_for(lambda: h.consumer.paused == set(), "P1 resumed")
    h.stop()
    assert h.consumer.resume_calls == [[P0], [P1]]


# ---- offset ranges (replay, redrive) ------------------------------------------------------------


def test_offset_ranges_finish_once_every_range_is_read_and_done(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([])
    h.client.hold("0:1")
    # 3 and 4 lie past P0's range, 7 and 8 past P1's: read in the same batch, never processed
    h.consumer.feed(*(message(P0, n) for n in range(5)), message(P1, 5))
    pipeline = h.build(OffsetRanges({P0: (0, 3), P1: (5, 7)}), commit=False)
    assert not pipeline.finished(), "not running yet"
    h.start(pipeline, stop_when=pipeline.finished)
    wait_for(lambda: sorted(h.client.delivered) == ["0:0", "0:2", "1:5"], "0, 2 and 5 delivered")
    h.loops()
    assert h.thread is not None and h.thread.is_alive()
    assert h.observed[-1] == (4, 2, False), "P1's range is not read to its end yet"

    h.consumer.feed(message(P1, 6), message(P1, 7), message(P1, 8))
    wait_for(lambda: "1:6" in h.client.delivered, "6 delivered")
    h.loops()
    assert h.thread.is_alive()
    assert h.observed[-1] == (5, 2, False), "all read, but 0:1 is still being delivered"

    h.client.release("0:1")
    h.join()  # stops by itself
    assert h.error is None
    assert h.observed[-1] == (5, 0, True)
    assert all(read == 5 and outstanding == 0 for read, outstanding, finished in h.observed if finished)
    assert sorted(h.decoder.seen) == ["0:0", "0:1", "0:2", "1:5", "1:6"]
    assert h.consumer.assigned_partitions == [(TOPIC, 0, 0), (TOPIC, 1, 5)]
    assert h.consumer.commits == []
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 5}


def test_offset_ranges_pause_a_partition_once_its_range_is_read(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([])
    h.consumer.feed(*(message(P0, n) for n in range(3)))
    pipeline = h.build(OffsetRanges({P0: (0, 2), P1: (0, 1)}))
    h.start(pipeline, stop_when=pipeline.finished)
    wait_for(lambda: P0 in h.consumer.paused, "P0 paused")
    h.loops()
    assert h.thread is not None and h.thread.is_alive(), "P1 is not read yet"
    h.consumer.feed(message(P1, 0))
    h.join()
    assert h.error is None
    assert sorted(h.decoder.seen) == ["0:0", "0:1", "1:0"], "0:2 lies past P0's range"
    assert sorted(h.client.delivered) == ["0:0", "0:1", "1:0"]
    assert (h.consumer.last_commit(P0), h.consumer.last_commit(P1)) == (2, 1)


def test_an_empty_range_is_finished_from_the_start(make_harness: Callable[..., Harness]) -> None:
    h = make_harness([])
    pipeline = h.build(OffsetRanges({P0: (4, 4)}))
    h.start(pipeline, stop_when=pipeline.finished)
    h.join()
    assert h.error is None
    assert h.consumer.assigned_partitions == []
    assert pipeline.stats.read == 0


# ---- failures -----------------------------------------------------------------------------------


def test_a_fatal_consumer_error_stops_without_committing(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    warning = Message(topic=TOPIC, partition=0, error=KafkaError(KafkaError._TRANSPORT, "broker went away"))
    fatal = Message(topic=TOPIC, partition=0, error=KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    h.consumer.feed(message(P0, 0), warning, message(P0, 1))
    pipeline = h.build(clock=frozen_clock)  # no periodic commits: 0 and 1 finished, position 2 due
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2, "0 and 1 delivered, past a non-fatal error")
    h.consumer.feed(fatal)
    h.join()
    assert isinstance(h.error, PipelineError) and "fenced" in str(h.error)
    assert h.consumer.commits == []


def test_a_long_registry_outage_halts_without_dead_lettering(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.decoder.registry_down = True
    ticks = iter(range(0, 10**9, 1000))  # every look at the clock is 1000 s later: patience runs out at once
    h.consumer.feed(message(P0, 0))
    pipeline = h.build(clock=lambda: float(next(ticks)))
    h.start(pipeline)
    h.join()
    assert isinstance(h.error, SchemaRegistryUnavailable)
    assert h.dead_letters.letters == [] and h.consumer.commits == []
    assert pipeline.outcomes.total() == 0


def test_readiness_says_why_this_member_cannot_take_work(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness()
    pipeline = harness.build()
    assert pipeline.readiness() == ["not in the consumer group yet"]
    harness.start(pipeline)
    wait_for(lambda: pipeline.joined, "the assignment")
    assert pipeline.readiness() == []
    harness.client.accepting = False
    harness.dead_letters.failure = RuntimeError("topic deleted")
    assert pipeline.readiness() == ["Wigzo: circuit open: Wigzo is failing", "dead-letter topic: topic deleted"]
    harness.dead_letters.failure = None
    harness.client.accepting = True
    harness.stop()


def test_the_kafka_probe_ends_an_outage_but_not_a_missing_topic(make_harness: Callable[..., Harness]) -> None:
    h = make_harness([])
    ticks = iter(range(0, 10**9, 100))  # every look at the clock is 100 s later: every pass probes Kafka
    pipeline = h.build(clock=lambda: float(next(ticks)))
    h.start(pipeline)
    h.loops()
    h.consumer.feed(Message(topic=TOPIC, error=KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")),
                    Message(topic=TOPIC, error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "no topic events")))
    h.loops()
    assert pipeline.readiness() == ["Kafka missing topic: no topic events"], "the metadata answer ended the outage"
    h.stop()


# ---- a streak of identical mapping rejections ----------------------------------------------------

STREAK = Flow(drain_bound=WAIT, systemic_threshold=3)


def dead_lettered(h: Harness) -> list[int]:
    return sorted(record.offset() for record, _ in h.dead_letters.letters)


def test_a_streak_of_identical_mapping_rejections_is_held_until_an_event_maps(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.consumer.feed(message(P0, 0), *(message(P0, n, "reject") for n in range(1, 7)))
    pipeline = h.build(flow=STREAK)
    h.start(pipeline)
    wait_for(lambda: pipeline.mapping_streak.held == 4, "the streak's events from the third on held")
    h.loops()
    assert dead_lettered(h) == [1, 2], "only the events before the threshold are dead-lettered"
    assert h.consumer.last_commit(P0) == 3, "nothing past the first held event is committed"
    assert pipeline.readiness() == [pipeline.mapping_streak.problem()]
    assert "rejected 6 events in a row the same way (Unmappable at event)" in pipeline.readiness()[0]
    assert "4 held uncommitted" in pipeline.readiness()[0]

    h.consumer.feed(message(P0, 7))  # maps: the mapping works, so the held events were bad data after all
    wait_for(lambda: h.consumer.last_commit(P0) == 8, "everything committed")
    assert dead_lettered(h) == [1, 2, 3, 4, 5, 6]
    assert pipeline.readiness() == []
    h.stop()
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.DEAD_LETTERED, "mapping"): 6}


def test_rejections_with_a_mapped_event_between_them_are_each_dead_lettered(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    actions = ["reject", "reject", "skip", "reject", "reject-other", "reject", "deliver", "reject", "reject"]
    h.consumer.feed(*(message(P0, n, action) for n, action in enumerate(actions)))
    pipeline = h.build(flow=STREAK)
    h.start(pipeline)
    wait_for(lambda: h.consumer.last_commit(P0) == len(actions), "everything committed")
    h.stop()
    assert dead_lettered(h) == [0, 1, 3, 4, 5, 7, 8]
    assert pipeline.mapping_streak.held == 0


def test_a_released_partition_leaves_its_held_events_uncommitted(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.consumer.feed(*(message(P0, n, "reject") for n in range(5)))
    pipeline = h.build(flow=STREAK)
    h.start(pipeline)
    wait_for(lambda: pipeline.mapping_streak.held == 3, "2, 3 and 4 held")
    revoked = h.consumer.rebalance("revoke", [P0])
    assert revoked.wait(WAIT)
    h.stop()
    assert dead_lettered(h) == [0, 1]
    assert h.consumer.last_commit(P0) == 2, "the next owner reads the held events again"
    assert (pipeline.stats.held, pipeline.mapping_streak.held) == (3, 0)
    assert "Unmappable at event" in pipeline.stats.held_because
    assert pipeline.readiness() == []


def test_a_range_left_with_only_held_events_is_stuck_not_finished(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([])
    h.consumer.feed(*(message(P0, n, "reject") for n in range(6)))
    pipeline = h.build(OffsetRanges({P0: (0, 6)}), flow=STREAK)
    h.start(pipeline, stop_when=lambda: pipeline.finished() or pipeline.stuck())
    h.join()  # stops by itself, instead of waiting for an event that would end the streak
    assert h.error is None
    assert not any(finished for _, _, finished in h.observed), "never finished: it stopped because stuck"
    assert dead_lettered(h) == [0, 1]
    assert h.consumer.last_commit(P0) == 2
    assert pipeline.stats.held == 4
