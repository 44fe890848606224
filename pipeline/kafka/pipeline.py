"""The consume loop: Kafka messages in, exactly one outcome per message, commits that never pass unfinished work.

One thread polls Kafka, decodes, validates and maps each message (cheap, microseconds), then hands
deliveries to an executor that keeps each user's events in order. Workers report back through a queue;
only the polling thread touches offsets, commits and the dead-letter producer, so none of that state
needs locks. A message is finished when its outcome is durable: delivered (2xx), skipped on purpose,
or acknowledged by the dead-letter topic.

`Pipeline` is given its parts (decoder, mapping, client, dead-letter writer, executor) and an
`Assignment`; `pipeline.kafka.runner` builds the real ones from settings, tests pass fakes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from pipeline.contract.decoder import SchemaRegistryUnavailable
from pipeline.kafka.assignment import Assignment
from pipeline.kafka.checkpoint import Checkpoint, PartitionKey
from pipeline.kafka.executor import Later
from pipeline.kafka.mapping_streak import MappingStreak
from pipeline.kafka.outcomes import OutcomeCounter
from pipeline.kafka.watch import KafkaWatch
from pipeline.model import (
    Aborted,
    DeadLetter,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    MappingDecision,
    Outcome,
    PipelineError,
    Rejection,
    Skip,
    Wait,
    WigzoRequest,
)
from pipeline.telemetry import metrics
from pipeline.telemetry.logs import message_fields

log = logging.getLogger(__name__)

BATCH_SIZE = 200
POLL_TIMEOUT = 0.05
COMMIT_INTERVAL = 1.0
KAFKA_PROBE_INTERVAL = 10.0  # while Kafka is unreachable, how often to ask for metadata to notice it is back
REGISTRY_PATIENCE = 120.0  # well under max.poll.interval.ms (300 s), so the group keeps us meanwhile


class Decoder(Protocol):
    def decode(self, topic: str, value: bytes | None) -> dict[str, Any] | Rejection: ...


class RequestDelivery(Protocol):
    def step(self, stop: threading.Event) -> DeliveryResult | Wait:
        """At most one attempt: the final result, or how long to wait before the next step."""


class DeliveryClient(Protocol):
    def delivery(self, request: WigzoRequest) -> RequestDelivery: ...
    def accepting_work(self) -> bool: ...
    def close(self) -> None: ...

    @property
    def state(self) -> str: ...

    @property
    def problem(self) -> str:
        """Why delivery is paused (what to fix), or empty."""


class DeadLetterSink(Protocol):
    failure: Exception | None

    def write(self, record: Message, letter: DeadLetter, on_durable: Callable[[], None]) -> None: ...
    def poll(self) -> None: ...
    def flush(self, timeout: float) -> bool: ...


class Executor(Protocol):
    def submit(self, key: Hashable | None, task: Callable[[], Later | None]) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Parts:
    decoder: Decoder
    map_event: Callable[[dict[str, Any]], MappingDecision]
    client: DeliveryClient
    dead_letters: DeadLetterSink
    executor: Executor


@dataclass(frozen=True, slots=True)
class Flow:
    """How work flows: per-key ordering, the window of unfinished messages per partition, how long a
    release may wait for deliveries already on the wire (connect + read timeout), and how many events in a
    row the mapping may reject the same way before the rest are held (pipeline.kafka.mapping_streak)."""

    ordering: str = "key"
    max_pending_per_partition: int = 250
    drain_bound: float = 21.0
    systemic_threshold: int = 10


@dataclass(eq=False)
class PartitionState:
    """What this consumer holds for one assigned partition beyond its offsets. Mutated by the polling
    thread only, except `stop`, which workers read."""

    key: PartitionKey
    stop: threading.Event = field(default_factory=threading.Event)
    in_executor: int = 0
    released: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    state: PartitionState
    record: Message
    offset: int
    result: DeliveryResult
    event_time: float | None  # the event's own timestamp, epoch seconds, for event-to-delivery latency


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An event the mapping rejected during a systemic streak: kept to be dead-lettered if the streak ends."""

    state: PartitionState
    record: Message
    offset: int
    letter: DeadLetter


@dataclass
class RunStats:
    read: int = 0
    aborted: int = 0
    duplicate_risk: int = 0  # delivered after its partition was released: the next owner may send it again
    held: int = 0  # held by a mapping streak when their partition was released: uncommitted, read again
    held_because: str = ""  # the streak's reason, as it was then


class Pipeline:
    """The processing core shared by `run`, `replay`, `redrive` and the demo.

    `reader` turns a consumed message into the record to process, or a Skip (redrive's filter); the
    offset tracked for commits stays the consumed message's own. `commit=False` commits nothing (replay).
    """

    def __init__(self, parts: Parts, assignment: Assignment, *, flow: Flow = Flow(),
                 reader: Callable[[Message], Message | Skip] | None = None, commit: bool = True,
                 watch: KafkaWatch | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.parts = parts
        self.assignment = assignment
        self.flow = flow
        self.watch = watch or KafkaWatch("Kafka", clock)
        self.outcomes = OutcomeCounter()
        self.stats = RunStats()
        self.checkpoint = Checkpoint()
        self.mapping_streak: MappingStreak[HeldEvent] = MappingStreak(flow.systemic_threshold)
        self._reader = reader
        self._commit_enabled = commit
        self._clock = clock
        self._wall_clock = wall_clock
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._partitions: dict[PartitionKey, PartitionState] = {}
        self._paused: set[PartitionKey] = set()
        self._consumer: Consumer | None = None
        self._shutdown = threading.Event()
        self._failed = False
        self._last_commit = clock()
        self._last_kafka_probe = clock()
        self.last_poll = clock()
        self.joined = False

    # ---- lifecycle ------------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        self._shutdown.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def outstanding(self) -> int:
        return self.checkpoint.outstanding()

    def readiness(self) -> list[str]:
        """Why this member cannot take work now; empty when ready."""
        reasons = [] if self.joined else ["not in the consumer group yet"]
        if not self.parts.client.accepting_work():
            problem = self.parts.client.problem
            reasons.append(f"Wigzo: {self.parts.client.state}" + (f": {problem}" if problem else ""))
        if self.parts.dead_letters.failure is not None:
            reasons.append(f"dead-letter topic: {self.parts.dead_letters.failure}")
        if problem := self.mapping_streak.problem():
            reasons.append(problem)
        return reasons + [f"Kafka {problem}" for problem in self.watch.problems()]

    def finished(self) -> bool:
        """Everything the assignment puts in scope was read, and all of it has its outcome."""
        return self._consumer is not None and self.assignment.finished(self._consumer) and not self.outstanding()

    def stuck(self) -> bool:
        """Only events held by a mapping streak are left unfinished, and everything in scope is read (or no
        partition is being read), so no event will come to end the streak: a batch run stops here instead of
        waiting for ever."""
        return (self._consumer is not None and self.mapping_streak.held > 0
                and self.checkpoint.unfinished() == self.mapping_streak.held
                and (self._paused == set(self._partitions) or self.assignment.finished(self._consumer)))

    def run(self, consumer: Consumer, stop_when: Callable[[], bool] | None = None) -> None:
        """Process messages until shutdown is requested or `stop_when` says so, then drain and commit."""
        self._consumer = consumer
        try:
            self.assignment.start(consumer, self)
            while not self._shutdown.is_set():
                self._raise_if_dead_letters_fail()
                self._apply_backpressure()
                messages = consumer.consume(BATCH_SIZE, timeout=POLL_TIMEOUT)
                self.last_poll = self._clock()
                for message in messages:
                    self._handle(message)
                self.watch.raise_if_fatal()
                self._drain_completions()
                self.parts.dead_letters.poll()
                if self.last_poll - self._last_commit >= COMMIT_INTERVAL:
                    self._commit(list(self._partitions))
                    self._report_lag()
                    self._watch_kafka()
                if stop_when is not None and stop_when():
                    break
            self._release(list(self._partitions), commit=True)
        except BaseException:
            self._failed = True  # from here on nothing may be committed: unfinished work must be redone
            raise
        finally:
            for state in self._partitions.values():
                state.stop.set()
            self.parts.executor.shutdown()
            self.parts.client.close()

    # ---- rebalances (called by the consumer from inside consume) ----------------------------------

    def assigned(self, keys: list[PartitionKey]) -> None:
        self.joined = True
        self.watch.reached()
        for key in keys:
            if key not in self._partitions:
                self._partitions[key] = PartitionState(key)
                self.checkpoint.track(key)
        log.info("assigned %s", _describe(keys))

    def revoked(self, keys: list[PartitionKey]) -> None:
        log.info("revoking %s: finishing in-flight deliveries, then committing", _describe(keys))
        self._release(keys, commit=True)

    def lost(self, keys: list[PartitionKey]) -> None:
        log.warning("lost %s without a clean revoke: abandoning their work uncommitted", _describe(keys))
        self._release(keys, commit=False)

    # ---- per message ----------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            self.watch.on_error(error)
            return
        key = (message.topic(), message.partition())
        metrics.MESSAGES_CONSUMED.labels(key[0]).inc()
        state = self._partitions.get(key)
        if state is None:
            return  # a straggler from a partition we no longer own: its next owner reads it
        offset = message.offset()
        if not self.assignment.in_scope(key, offset):
            return
        self.checkpoint.read(key, offset)
        self.stats.read += 1
        record = message if self._reader is None else self._reader(message)
        if isinstance(record, Skip):
            self._finish(state, offset, Outcome.SKIPPED, record.reason)
        else:
            self._process(state, record, offset)

    def _process(self, state: PartitionState, record: Message, offset: int) -> None:
        """Route one record to exactly one outcome (possibly later, for deliveries and dead letters)."""
        event = self._decode(record)
        if isinstance(event, Rejection):
            self._dead_letter(state, record, offset, self._first_failure(event))
            return
        try:
            decision = self.parts.map_event(event)
        except Exception as exc:  # the mapping is meant never to raise; if it does, the event is kept, not lost
            log.exception("mapping raised", extra=_about(record, event))
            decision = Rejection("mapping", "MappingCrashed", f"the mapping raised {type(exc).__name__}: {exc}")
        if isinstance(decision, Rejection):
            self._mapping_rejected(HeldEvent(state, record, offset, self._first_failure(decision)))
            return
        if held := self.mapping_streak.mapped():
            self._dead_letter_held(held)
        if isinstance(decision, Skip):
            self._finish(state, offset, Outcome.SKIPPED, decision.reason)
        else:
            state.in_executor += 1
            event_time = _epoch_seconds(event.get("timestamp"))
            self.parts.executor.submit(self._ordering_key(record, event), partial(
                self._deliver, _EventDelivery(state, record, offset, event_time, decision.requests)))

    def _mapping_rejected(self, event: HeldEvent) -> None:
        """Dead-letter it, or hold it when the same rejection has become systemic (said once per streak)."""
        if not self.mapping_streak.rejected(event.letter.rejection, event):
            self._dead_letter(event.state, event.record, event.offset, event.letter)
            return
        metrics.MAPPING_HELD.set(self.mapping_streak.held)
        if self.mapping_streak.held == 1:
            log.error("%s", self.mapping_streak.problem())

    def _dead_letter_held(self, held: list[HeldEvent]) -> None:
        """An event mapped again: the streak's held events were bad data after all."""
        log.warning("an event mapped again: the %d events held by the mapping streak were bad data after all; "
                    "dead-lettering them", len(held))
        metrics.MAPPING_HELD.set(self.mapping_streak.held)
        for event in held:
            self._dead_letter(event.state, event.record, event.offset, event.letter)

    def _decode(self, record: Message) -> dict[str, Any] | Rejection:
        """Decode, waiting out a Schema Registry outage (not the message's fault, so never a dead letter);
        past REGISTRY_PATIENCE seconds, halt without committing rather than guess."""
        delay, deadline = 1.0, self._clock() + REGISTRY_PATIENCE
        while True:
            try:
                return self.parts.decoder.decode(record.topic() or "", record.value())
            except SchemaRegistryUnavailable as exc:
                if self._clock() + delay > deadline or self._shutdown.is_set():
                    raise
                log.warning("%s; retrying in %.0fs", exc, delay)
                self._shutdown.wait(delay)
                delay = min(delay * 2, 30.0)

    def _ordering_key(self, record: Message, event: dict[str, Any]) -> Hashable | None:
        mode = self.flow.ordering
        if mode == "key":
            return record.key() or event.get("userId") or event.get("anonymousId")
        if mode == "partition":
            return (record.topic(), record.partition())
        return None

    def _deliver(self, job: _EventDelivery) -> Later | None:
        """Worker thread: one step of the event's delivery; its requests go in order, the first that does not
        succeed decides. A wait (backoff, Retry-After, delivery paused) goes back to the executor, which keeps
        the key held and runs the step again when due, or at once when the partition is stopped: no thread
        sleeps through it. None once the result is queued for the polling thread."""
        client, stop = self.parts.client, job.state.stop
        result: DeliveryResult = Aborted(attempts=0)
        try:
            while job.sent < len(job.requests) and (job.current is not None or not stop.is_set()):
                job.current = job.current or client.delivery(job.requests[job.sent])
                outcome = job.current.step(stop)
                if isinstance(outcome, Wait):
                    return Later(outcome.seconds, (stop,) if outcome.resumed is None else (stop, outcome.resumed))
                job.current, result = None, outcome
                if not isinstance(result, Delivered):
                    break
                job.sent += 1
        except Exception as exc:  # a bug in delivery must not lose the event: dead-letter it with the cause
            log.exception("delivery raised", extra=message_fields(job.record.topic(), job.record.partition(),
                                                                  job.record.offset()))
            now = self._wall_clock()
            result = DeliveryFailed(Rejection("delivery", "DeliveryCrashed", f"{type(exc).__name__}: {exc}"),
                                    attempts=1, first_failure=now, last_failure=now, history=())
        self._completions.put(Completion(job.state, job.record, job.offset, result, job.event_time))
        return None

    def _first_failure(self, rejection: Rejection) -> DeadLetter:
        now = self._wall_clock()
        return DeadLetter(rejection, attempts=1, first_failure=now, last_failure=now)

    def _drain_completions(self) -> None:
        while True:
            try:
                done = self._completions.get_nowait()
            except queue.Empty:
                return
            done.state.in_executor -= 1
            result = done.result
            if isinstance(result, Delivered):
                if done.state.released:
                    self.stats.duplicate_risk += 1
                if done.event_time is not None:
                    metrics.EVENT_TO_DELIVERY.observe(max(0.0, self._wall_clock() - done.event_time))
                self._finish(done.state, done.offset, Outcome.DELIVERED, "")
            elif isinstance(result, DeliveryFailed):
                if not done.state.released:
                    self._dead_letter(done.state, done.record, done.offset, DeadLetter(
                        result.rejection, result.attempts, result.first_failure, result.last_failure,
                        result.history))
            else:
                self.stats.aborted += 1  # stays unfinished, so uncommitted: whoever owns it next redoes it

    def _finish(self, state: PartitionState, offset: int, outcome: Outcome, detail: str) -> None:
        self.outcomes.record(outcome, detail)
        metrics.OUTCOMES.labels(outcome.value, detail if outcome is Outcome.DEAD_LETTERED else "").inc()
        if not state.released:
            self.checkpoint.finish(state.key, offset)

    def _dead_letter(self, state: PartitionState, record: Message, offset: int, letter: DeadLetter) -> None:
        detail = letter.rejection.stage
        self.parts.dead_letters.write(record, letter,
                                      lambda: self._finish(state, offset, Outcome.DEAD_LETTERED, detail))

    def _raise_if_dead_letters_fail(self) -> None:
        if self.parts.dead_letters.failure is not None:
            raise self.parts.dead_letters.failure

    # ---- flow control, commits, release ---------------------------------------------------------

    def _apply_backpressure(self) -> None:
        """Pause partitions whose window of unfinished messages is full or that have nothing more to read,
        or all of them while Wigzo is down or rejects our token; resume once below half the window."""
        if self._consumer is None or not self._partitions:
            return
        limit = self.flow.max_pending_per_partition
        accepting = self.parts.client.accepting_work()
        wanted = set()
        for key in self._partitions:
            pending = self.checkpoint.outstanding(key)
            if (not accepting or self.assignment.exhausted(key) or pending >= limit
                    or (key in self._paused and pending > limit // 2)):
                wanted.add(key)
        if to_pause := wanted - self._paused:
            self._consumer.pause(_partitions(to_pause))
        if to_resume := self._paused - wanted:
            self._consumer.resume(_partitions(to_resume))
        self._paused = wanted

    def _wait_for_workers(self, states: list[PartitionState]) -> None:
        deadline = self._clock() + self.flow.drain_bound
        while any(s.in_executor for s in states) and self._clock() < deadline:
            time.sleep(0.01)
            self._drain_completions()
            self.parts.dead_letters.poll()
        self._drain_completions()

    def _commit(self, keys: Iterable[PartitionKey]) -> None:
        self._last_commit = self._clock()
        if self._consumer is None or not self._commit_enabled:
            return
        self._raise_if_dead_letters_fail()
        due = self.checkpoint.due(keys)
        if not due:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in due.items()], asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (%s); will retry with the next commit", exc.args[0].str())
            return
        self.checkpoint.committed(due)
        self.watch.reached()

    def _report_lag(self) -> None:
        """Messages behind each assigned partition's high watermark (as of the last fetch)."""
        if self._consumer is None or not self._partitions:
            return
        for tp in self._consumer.position(_partitions(self._partitions)):
            high = self._consumer.get_watermark_offsets(tp, cached=True)[1]
            if tp.offset >= 0 and high >= 0:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    def _watch_kafka(self) -> None:
        """Summaries of ongoing Kafka problems; while unreachable, a metadata request now and then notices
        its return even when no message flows."""
        self.watch.tick()
        if (self._consumer is not None and self.watch.problems()
                and self.last_poll - self._last_kafka_probe >= KAFKA_PROBE_INTERVAL):
            self._last_kafka_probe = self.last_poll
            try:
                self._consumer.list_topics(timeout=1.0)
            except KafkaException:
                return
            self.watch.reached(topics=False)

    def _release(self, keys: list[PartitionKey], *, commit: bool) -> None:
        """Finish the work already read for these partitions (bounded), make their dead letters durable,
        commit what is finished, and forget them.

        Work left unfinished is redone by the partition's next owner, and so is every finished message
        behind it (one commit offset per partition), so draining first is what keeps a clean rebalance
        free of duplicates. While Wigzo is down there is nothing to drain: stop at once."""
        states = [self._partitions[k] for k in keys if k in self._partitions]
        released, because = set(keys), self.mapping_streak.problem()
        if held := self.mapping_streak.let_go(lambda event: event.state.key not in released):
            self.stats.held += len(held)
            self.stats.held_because = because
            metrics.MAPPING_HELD.set(self.mapping_streak.held)
            log.warning("leaving %d events held by the mapping streak uncommitted in %s: whoever reads them next "
                        "maps them again", len(held), _describe(keys))
        if commit and self.parts.client.accepting_work() and not self._failed:
            self._wait_for_workers(states)
        for state in states:
            state.stop.set()  # no new attempts; requests on the wire complete or time out
        self._wait_for_workers(states)
        if commit and not self._failed:
            if not self.parts.dead_letters.flush(timeout=30.0):
                raise PipelineError("dead letters were not acknowledged within 30s; not committing")
            self._drain_completions()
            self._commit(keys)
        # librdkafka keeps a partition's pause flag across unassign and assign: clear ours before letting go,
        # or a partition we get back later would stay paused with nobody to resume it
        if self._consumer is not None and (paused := [k for k in keys if k in self._paused]):
            self._consumer.resume(_partitions(paused))
        for key in keys:
            if (state := self._partitions.pop(key, None)) is not None:
                state.released = True
            self._paused.discard(key)
            _forget_lag(key)
        self.checkpoint.forget(keys)


def _about(record: Message, event: dict[str, Any]) -> dict[str, Any]:
    """A log line's coordinates of the message it is about (never its payload)."""
    message_id = event.get("messageId")
    return message_fields(record.topic(), record.partition(), record.offset(),
                          message_id if isinstance(message_id, str) else None)


def _epoch_seconds(timestamp: Any) -> float | None:
    """A validated event's ISO-8601 timestamp as epoch seconds (None when absent)."""
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


@dataclass(eq=False)
class _EventDelivery:
    """One event between the worker steps of `Pipeline._deliver`: its requests, the one under way, and where
    its result goes."""

    state: PartitionState
    record: Message
    offset: int
    event_time: float | None
    requests: tuple[WigzoRequest, ...]
    sent: int = 0                     # requests delivered so far
    current: RequestDelivery | None = None   # the client's delivery of requests[sent], between steps


def _forget_lag(key: PartitionKey) -> None:
    """A released partition is no longer behind here (its new owner reports it); prometheus-client cannot
    remove a label set across worker processes, so it reads 0 rather than disappearing."""
    metrics.CONSUMER_LAG.labels(key[0], str(key[1])).set(0)


def _partitions(keys: Iterable[PartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in keys]


def _describe(keys: Iterable[PartitionKey]) -> str:
    return ", ".join(f"{topic}[{partition}]" for topic, partition in keys) or "nothing"
