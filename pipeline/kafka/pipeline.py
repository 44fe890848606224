"""`wigzo-pipeline run`: the consumer group that turns Kafka messages into Wigzo calls.

One thread polls Kafka, decodes, validates and maps each message (cheap, microseconds), then hands
deliveries to a pool of workers that keeps each user's events in order. Workers report back through
a queue; only the polling thread touches offsets, commits and the dead-letter producer, so none of
that state needs locks. A message is finished when its outcome is durable: delivered (2xx), skipped
on purpose, or acknowledged by the dead-letter topic. Commits never pass an unfinished message.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from pipeline.config import Settings, add_options, load_settings
from pipeline.contract.decoder import EventDecoder, SchemaRegistryUnavailable
from pipeline.kafka.checkpoint import PartitionOffsets
from pipeline.kafka.dead_letters import DeadLetterWriter, KafkaRecord
from pipeline.kafka.executor import OrderedExecutor
from pipeline.kafka.outcomes import OutcomeCounter
from pipeline.model import (
    Aborted,
    DeadLetter,
    Deliver,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    Outcome,
    PipelineError,
    Rejection,
    Skip,
)
from pipeline.wigzo.client import WigzoClient
from pipeline.wigzo.mapping import MappingConfig, map_event

log = logging.getLogger(__name__)

BATCH_SIZE = 200
POLL_TIMEOUT = 0.05
COMMIT_INTERVAL = 1.0
REGISTRY_PATIENCE = 120.0  # well under max.poll.interval.ms (300 s), so the group keeps us meanwhile
PartitionKey = tuple[str, int]


@dataclass(eq=False)
class PartitionState:
    """What this consumer holds for one assigned partition. Mutated by the polling thread only,
    except `stop`, which workers read."""

    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    stop: threading.Event = field(default_factory=threading.Event)
    in_executor: int = 0
    committed: int | None = None
    end_offset: int | None = None  # replay ranges: first offset not to process
    range_complete: bool = False
    released: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    state: PartitionState
    record: KafkaRecord
    offset: int
    result: DeliveryResult


@dataclass
class RunStats:
    read: int = 0
    aborted: int = 0
    duplicate_risk: int = 0  # delivered after its partition was released: the next owner may send it again


class Pipeline:
    """The processing core shared by `run`, `replay`, `redrive` and the demo."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, commit: bool = True,
                 select: Callable[[Message], KafkaRecord | Skip] | None = None) -> None:
        settings.require_org_token()
        self.settings = settings
        self.outcomes = OutcomeCounter()
        self.stats = RunStats()
        self._clock = clock
        self._wall_clock = wall_clock
        self._commit_enabled = commit
        self._select = select
        self._decoder = EventDecoder(settings)
        self._mapping = MappingConfig.from_settings(settings)
        self._client = WigzoClient(settings, clock=clock, wall_clock=wall_clock)
        self._dlq = DeadLetterWriter(settings)
        self._executor = OrderedExecutor(settings.max_in_flight)
        self._completions: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._partitions: dict[PartitionKey, PartitionState] = {}
        self._paused: set[PartitionKey] = set()
        self._consumer: Consumer | None = None
        self._shutdown = threading.Event()
        self._failed = False
        self._last_commit = clock()
        self._last_message = clock()
        self._drain_bound = settings.connect_timeout + settings.read_timeout + 1.0

    # ---- Kafka plumbing -------------------------------------------------------------------------

    def consumer_config(self, group_id: str | None = None) -> dict[str, Any]:
        return {
            "group.id": group_id or self.settings.group_id,
            "auto.offset.reset": self.settings.auto_offset_reset,
            "client.id": "segment-wigzo",
            **self.settings.kafka_client_config(),
            # correctness depends on these, so the pass-through cannot override them
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._partitions.setdefault((tp.topic, tp.partition), PartitionState())
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoking %s: finishing in-flight deliveries, then committing", _describe(partitions))
        self._release([(tp.topic, tp.partition) for tp in partitions], commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s without a clean revoke: abandoning their work uncommitted", _describe(partitions))
        self._release([(tp.topic, tp.partition) for tp in partitions], commit=False)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    # ---- the loop -------------------------------------------------------------------------------

    def run(self, consumer: Consumer, stop_when: Callable[[], bool] | None = None) -> None:
        """Process messages until shutdown is requested or `stop_when` says so, then drain and commit."""
        self._consumer = consumer
        try:
            while not self._shutdown.is_set():
                self._raise_if_dead_letters_fail()
                self._apply_backpressure()
                messages = consumer.consume(BATCH_SIZE, timeout=POLL_TIMEOUT)
                if messages:
                    self._last_message = self._clock()
                for message in messages:
                    self._handle(message)
                self._drain_completions()
                self._dlq.poll()
                if self._commit_enabled and self._clock() - self._last_commit >= COMMIT_INTERVAL:
                    self._commit(list(self._partitions))
                if stop_when is not None and stop_when():
                    break
            self._release(list(self._partitions), commit=True)
        except BaseException:
            self._failed = True  # from here on nothing may be committed: unfinished work must be redone
            raise
        finally:
            for state in self._partitions.values():
                state.stop.set()
            self._executor.shutdown()
            self._client.close()

    def subscribe(self, consumer: Consumer) -> None:
        for topic in self.settings.topics:
            if topic.startswith("^"):
                _refuse_pattern_matching_dlq(topic, self.settings.dlq_topic)
        consumer.subscribe(list(self.settings.topics), on_assign=self._on_assign,
                           on_revoke=self._on_revoke, on_lost=self._on_lost)

    def assign_range(self, consumer: Consumer, ranges: dict[PartitionKey, tuple[int, int]]) -> None:
        """Replay: read [start, end) of each partition under manual assignment, outside any group."""
        for key, (start, end) in ranges.items():
            self._partitions[key] = PartitionState(end_offset=end, range_complete=start >= end)
        consumer.assign([TopicPartition(t, p, start) for (t, p), (start, end) in ranges.items() if start < end])

    def idle_for(self, seconds: float) -> Callable[[], bool]:
        """A stop condition: nothing read for `seconds` and nothing left unfinished."""
        return lambda: self._clock() - self._last_message >= seconds and self.outstanding() == 0

    def range_done(self) -> bool:
        """Replay stop condition: every partition read up to its end offset and all of it finished.
        The consumer position covers ranges that end in transaction markers rather than messages."""
        reading = [(k, s) for k, s in self._partitions.items() if s.end_offset is not None and not s.range_complete]
        if reading and self._consumer is not None:
            positions = self._consumer.position([TopicPartition(t, p) for (t, p), _ in reading])
            for (_, state), tp in zip(reading, positions, strict=True):
                state.range_complete = state.end_offset is not None and tp.offset >= state.end_offset
        return all(s.range_complete for s in self._partitions.values()) and self.outstanding() == 0

    def outstanding(self) -> int:
        return sum(state.offsets.outstanding for state in self._partitions.values())

    # ---- per message ----------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise PipelineError(f"Kafka consumer failed: {error.str()}")
            log.warning("Kafka reported: %s", error.str())
            return
        state = self._partitions.get((message.topic(), message.partition()))
        if state is None or state.released:
            return  # a straggler from a partition we no longer own: its next owner reads it
        offset = message.offset()
        if state.end_offset is not None:
            if offset >= state.end_offset:
                state.range_complete = True
                return  # past the replay range: not read, not ours
            state.range_complete = offset + 1 >= state.end_offset
        state.offsets.read(offset)
        self.stats.read += 1
        record = message if self._select is None else self._select(message)
        if isinstance(record, Skip):
            self._finish(state, offset, Outcome.SKIPPED, record.reason)
        else:
            self._process(state, record, offset)

    def _process(self, state: PartitionState, record: KafkaRecord, offset: int) -> None:
        """Route one record to exactly one outcome (possibly later, for deliveries and dead letters).
        `offset` is the position tracked for commits: the record's own, except in redrive."""
        event = self._decode(record)
        if isinstance(event, Rejection):
            self._dead_letter(state, record, offset, self._first_failure(event))
            return
        try:
            decision = map_event(event, self._mapping)
        except Exception as exc:  # the mapping is meant never to raise; if it does, the event is kept, not lost
            log.exception("mapping raised")
            decision = Rejection("mapping", "MappingCrashed", f"the mapping raised {type(exc).__name__}: {exc}")
        if isinstance(decision, Skip):
            self._finish(state, offset, Outcome.SKIPPED, decision.reason)
        elif isinstance(decision, Rejection):
            self._dead_letter(state, record, offset, self._first_failure(decision))
        else:
            state.in_executor += 1
            self._executor.submit(self._ordering_key(record, event), lambda: self._completions.put(
                Completion(state, record, offset, self._deliver(decision, state.stop))))

    def _decode(self, record: KafkaRecord) -> dict[str, Any] | Rejection:
        """Decode, waiting out a Schema Registry outage (not the message's fault, so never a dead letter);
        past REGISTRY_PATIENCE seconds, halt without committing rather than guess."""
        delay, deadline = 1.0, self._clock() + REGISTRY_PATIENCE
        while True:
            try:
                return self._decoder.decode(record.topic() or "", record.value())
            except SchemaRegistryUnavailable as exc:
                if self._clock() + delay > deadline or self._shutdown.is_set():
                    raise
                log.warning("%s; retrying in %.0fs", exc, delay)
                self._shutdown.wait(delay)
                delay = min(delay * 2, 30.0)

    def _ordering_key(self, record: KafkaRecord, event: dict[str, Any]) -> Hashable | None:
        mode = self.settings.ordering
        if mode == "key":
            return record.key() or event.get("userId") or event.get("anonymousId")
        if mode == "partition":
            return (record.topic(), record.partition())
        return None

    def _deliver(self, decision: Deliver, stop: threading.Event) -> DeliveryResult:
        """Worker thread: send the event's requests in order; the first that does not succeed decides."""
        if stop.is_set():
            return Aborted(attempts=0)
        result: DeliveryResult = Aborted(attempts=0)
        try:
            for request in decision.requests:
                result = self._client.deliver(request, stop)
                if not isinstance(result, Delivered):
                    return result
        except Exception as exc:  # a bug in delivery must not lose the event: dead-letter it with the cause
            log.exception("delivery raised")
            now = self._wall_clock()
            return DeliveryFailed(Rejection("delivery", "DeliveryCrashed", f"{type(exc).__name__}: {exc}"),
                                  attempts=1, first_failure=now, last_failure=now, history=())
        return result

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
        state.offsets.finish(offset)

    def _dead_letter(self, state: PartitionState, record: KafkaRecord, offset: int, letter: DeadLetter) -> None:
        detail = letter.rejection.stage
        self._dlq.write(record, letter, lambda: self._finish(state, offset, Outcome.DEAD_LETTERED, detail))

    def _raise_if_dead_letters_fail(self) -> None:
        if self._dlq.failure is not None:
            raise self._dlq.failure

    # ---- flow control, commits, release ---------------------------------------------------------

    def _apply_backpressure(self) -> None:
        """Pause partitions whose window of unfinished messages is full, or all of them while Wigzo is
        down or rejects our token; resume once below half the window and Wigzo takes work again."""
        if self._consumer is None or not self._partitions:
            return
        limit = self.settings.max_pending_per_partition
        accepting = self._client.accepting_work()
        wanted = set()
        for key, state in self._partitions.items():
            pending = state.offsets.outstanding
            if (not accepting or state.range_complete or pending >= limit
                    or (key in self._paused and pending > limit // 2)):
                wanted.add(key)
        if to_pause := wanted - self._paused:
            self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
        if to_resume := self._paused - wanted:
            self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
        self._paused = wanted

    def _wait_for_workers(self, states: list[PartitionState]) -> None:
        deadline = self._clock() + self._drain_bound
        while any(s.in_executor for s in states) and self._clock() < deadline:
            time.sleep(0.01)
            self._drain_completions()
            self._dlq.poll()
        self._drain_completions()

    def _commit(self, keys: Iterable[PartitionKey]) -> None:
        self._last_commit = self._clock()
        if self._consumer is None or not self._commit_enabled:
            return
        self._raise_if_dead_letters_fail()
        offsets, states = [], []
        for key in keys:
            state = self._partitions.get(key)
            if state is None:
                continue
            position = state.offsets.commit_position
            if position is not None and position != state.committed:
                offsets.append(TopicPartition(key[0], key[1], position))
                states.append(state)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (%s); will retry with the next commit", exc.args[0].str())
            return
        for state, tp in zip(states, offsets, strict=True):
            state.committed = tp.offset

    def _release(self, keys: list[PartitionKey], *, commit: bool) -> None:
        """Finish the work already read for these partitions (bounded), make their dead letters durable,
        commit what is finished, and forget them.

        Work left unfinished is redone by the partition's next owner, and so is every finished message
        behind it (one commit offset per partition), so draining first is what keeps a clean rebalance
        free of duplicates. While Wigzo is down there is nothing to drain: stop at once."""
        states = [self._partitions[k] for k in keys if k in self._partitions]
        if commit and self._client.accepting_work() and not self._failed:
            self._wait_for_workers(states)
        for state in states:
            state.stop.set()  # no new attempts; requests on the wire complete or time out
        self._wait_for_workers(states)
        if commit and not self._failed:
            if not self._dlq.flush(timeout=30.0):
                raise PipelineError("dead letters were not acknowledged within 30s; not committing")
            self._drain_completions()
            self._commit(keys)
        # librdkafka keeps a partition's pause flag across unassign and assign: clear ours before letting go,
        # or a partition we get back later would stay paused with nobody to resume it
        if self._consumer is not None and (paused := [k for k in keys if k in self._paused]):
            self._consumer.resume([TopicPartition(t, p) for t, p in paused])
        for key in keys:
            if (state := self._partitions.pop(key, None)) is not None:
                state.released = True
            self._paused.discard(key)


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def _refuse_pattern_matching_dlq(pattern: str, dlq_topic: str) -> None:
    """A pattern subscription must not read our own dead letters back in."""
    if not dlq_topic:
        raise PipelineError(f"with a topic pattern ({pattern!r}) set DLQ_TOPIC explicitly: per-topic "
                            "'<topic>.dlq' names could match the pattern and be consumed again")
    if re.match(pattern[1:], dlq_topic):
        raise PipelineError(f"topic pattern {pattern!r} matches the dead-letter topic {dlq_topic!r}; "
                            "narrow the pattern or choose another DLQ_TOPIC")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                        help="exit once nothing was read for SECONDS and all work is finished (batch runs)")


def install_signal_handlers(pipeline: Pipeline) -> None:
    """First SIGTERM/SIGINT: drain, commit, exit 0. Second: exit at once, committing nothing more."""

    def handle(signum: int, _frame: object) -> None:
        if pipeline.shutting_down:
            log.warning("second signal: exiting now without committing unfinished work")
            os._exit(128 + signum)
        log.info("signal %d: draining in-flight deliveries and committing; signal again to exit at once", signum)
        pipeline.request_shutdown()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(args: argparse.Namespace) -> int:
    configure_logging()
    settings = load_settings(args)
    pipeline = Pipeline(settings)
    consumer = Consumer(pipeline.consumer_config())
    install_signal_handlers(pipeline)
    pipeline.subscribe(consumer)
    stop_when = pipeline.idle_for(args.exit_when_idle) if args.exit_when_idle else None
    try:
        pipeline.run(consumer, stop_when=stop_when)
    finally:
        consumer.close()
    totals = pipeline.outcomes.totals()
    log.info("stopped: read %d, %s; %d left unfinished (uncommitted, redone by the next owner), %d delivered "
             "after their partition was released (may be delivered again)", pipeline.stats.read,
             ", ".join(f"{outcome.value} {count}" for outcome, count in totals.items()),
             pipeline.stats.aborted, pipeline.stats.duplicate_risk)
    return 0
