"""The consume loop: Kafka messages in, exactly one outcome per message, commits that never pass unfinished work.

Every message goes through the README's five steps, one module each:
1. Read: poll the group; the partition ledger (`ledger.py`) keeps each message until it is finished.
2. Decode and validate: the decoder (`pipeline/contract/decoder.py`).
3. Decide: the chain of the message's destination (`pipeline/wigzo/chain.py`; the destination owns the topic,
   `parts.Destinations`): these requests, a skip, or a rejection.
4. Deliver: `executor.py` sends the requests on worker threads, each user's events in order.
5. Outcome and commit: results come back on a queue, dead-letter acknowledgements from the writer's `poll`;
   the ledger says which offsets may be committed.
Only this thread touches offsets, commits and the dead-letter producer, so none of that needs locks. A message
is finished when its outcome is durable: delivered (2xx), skipped on purpose, or acknowledged by the dead-letter
topic. What others may read about the run is `status` (`status.py`). Settings that change while running
(`live`: SIGHUP, a file changed) are applied here too, between polls.

Nothing in the loop waits for anyone outside the process: commits are asynchronous, schema ids are resolved on
a thread of their own (a message that needs one waits, the others go on), and lag is asked in the background.
A message waiting for its schema id may be overtaken by a later event of the same user that needed none
(a JSON event): per-user order holds among events of one format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from pipeline.contract.decoder import SchemaNeeded
from pipeline.kafka.admin import LatestHighs, fetched_lag
from pipeline.kafka.assignment import Assignment
from pipeline.kafka.executor import EventSend, ordering_key
from pipeline.kafka.ledger import Partition, PartitionKey, PartitionLedger, Pending, describe
from pipeline.kafka.outcomes import Settlement
from pipeline.kafka.parts import Destination, Flow, Parts, Reload
from pipeline.kafka.status import Status
from pipeline.kafka.watch import KafkaWatch
from pipeline.model import Deliver, Outcome, PipelineError, Rejection, Skip
from pipeline.telemetry import metrics
from pipeline.telemetry.logs import message_fields

log = logging.getLogger(__name__)

BATCH_SIZE = 200
POLL_TIMEOUT = 0.05
COMMIT_INTERVAL = 1.0
DEAD_LETTER_PATIENCE = 30.0  # how long a release waits for the dead-letter topic's acknowledgements


class Pipeline:
    """The processing core shared by `run`, `replay`, `redrive` and the demo.

    `reader` turns a consumed message into the record to process, or a Skip (redrive's filter); the
    offset tracked for commits stays the consumed message's own. `commit=False` commits nothing (replay).
    """

    def __init__(self, parts: Parts, assignment: Assignment, flow: Flow, *,
                 reader: Callable[[Message], Message | Skip] | None = None, commit: bool = True,
                 watch: KafkaWatch | None = None, highs: LatestHighs | None = None, live: Reload | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self._parts = parts
        self._assignment = assignment
        self._flow = flow
        self._highs = highs  # watermarks of paused partitions, for a lag gauge that stays true while paused
        self.live = live  # the member's SIGHUP asks it to reload
        self._ledger = PartitionLedger(flow.max_pending_per_partition, flow.window_bytes, flow.systemic_threshold)
        self.watch = watch or KafkaWatch("Kafka", clock)  # librdkafka's error_cb reports here (runner)
        self.status = Status(parts, self._ledger, assignment, self.watch, started=clock(),
                             registry_patience=flow.registry_patience)
        self._settlement = Settlement(self._ledger, parts.dead_letters, self.watch, self.status.outcomes,
                                      self.status.stats, parts.destinations.name_for, commit=commit,
                                      wall_clock=wall_clock)
        self._reader = reader
        self._clock = clock
        self._wall_clock = wall_clock
        self._failed = False
        self._last_commit = clock()

    def commit_answered(self, error: Any, partitions: list[TopicPartition]) -> None:
        """librdkafka's on_commit callback (served inside `consume`, on this thread)."""
        self._settlement.commit_answered(error, partitions)

    def request_shutdown(self) -> None:
        self._parts.shutdown.set()

    @property
    def shutting_down(self) -> bool:
        return self._parts.shutdown.is_set()

    def run(self, consumer: Consumer, stop_when: Callable[[], bool] | None = None) -> None:
        """Process messages until shutdown is requested or `stop_when` says so, then drain and commit."""
        self.status.consumer = consumer
        try:
            self._assignment.start(consumer, self)
            while not self.shutting_down:
                self._settlement.raise_if_dead_letters_fail()
                if self.live is not None:
                    self.live.poll()
                self._repause(consumer)
                messages = consumer.consume(BATCH_SIZE, timeout=POLL_TIMEOUT)
                now = self.status.last_poll = self._clock()
                for message in messages:
                    self._read(message)
                self._decode_resolved()
                self.watch.raise_if_fatal()
                self._settlement.settle()
                if now - self._last_commit >= COMMIT_INTERVAL:
                    self._last_commit = now
                    keys = self._ledger.keys()
                    self._settlement.commit(consumer, keys)
                    self._report(consumer, keys)
                    self.watch.check_in(consumer)
                    self.watch.check_silence(working=bool(keys))
                if stop_when is not None and stop_when():
                    break
            self._release(self._ledger.keys(), commit=True)
        except BaseException:
            self._failed = True  # from here on nothing may be committed: unfinished work must be redone
            raise
        finally:
            self._ledger.stop_all()
            self._parts.executor.shutdown()
            for destination in self._parts.destinations:
                destination.client.close()

    # ---- rebalances (called by the consumer from inside consume) ----------------------------------

    def assigned(self, keys: list[PartitionKey]) -> None:
        self.status.joined = True
        self.watch.reached()
        self._ledger.assign(keys)
        log.info("assigned %s", describe(keys))

    def revoked(self, keys: list[PartitionKey]) -> None:
        log.info("revoking %s: finishing in-flight deliveries, then committing", describe(keys))
        self._release(keys, commit=True)

    def lost(self, keys: list[PartitionKey]) -> None:
        log.warning("lost %s without a clean revoke: abandoning their work uncommitted", describe(keys))
        self._release(keys, commit=False)

    # ---- 1. read --------------------------------------------------------------------------------

    def _read(self, message: Message) -> None:
        if (error := message.error()) is not None:
            self.watch.on_error(error)
            return
        key = (message.topic(), message.partition())
        metrics.MESSAGES_CONSUMED.labels(key[0]).inc()
        partition = self._ledger.get(key)
        if partition is None or not self._assignment.in_scope(key, message.offset()):
            return  # a straggler from a partition we no longer own (its next owner reads it), or past the range
        self.status.stats.read += 1
        record = message if self._reader is None else self._reader(message)
        if isinstance(record, Skip):
            self._settlement.finish(partition.read(message.offset(), message), Outcome.SKIPPED, record.reason)
        else:
            self._process(partition.read(message.offset(), record))

    # ---- 2. decode, 3. decide -------------------------------------------------------------------

    def _process(self, pending: Pending) -> None:
        """Route one record to exactly one outcome (possibly later, for deliveries, dead letters and messages
        whose schema id is being resolved)."""
        record, settlement = pending.record, self._settlement
        destination = self._parts.destinations.for_topic(record.topic() or "")
        event = self._parts.decoder.decode(record.topic() or "", record.value())
        if isinstance(event, SchemaNeeded):
            self._ledger.await_schema(event.schema_id, pending)
            self._parts.schemas.want(event.schema_id)
            return
        if isinstance(event, Rejection):
            settlement.dead_letter(pending, settlement.first_failure(event))
            return
        try:
            decision = destination.decide(event)
        except Exception as exc:  # the chain is meant never to raise; if it does, the event is kept, not lost
            log.exception("mapping raised", extra=_about(record, event))
            decision = Rejection("mapping", "MappingCrashed", f"the mapping raised {type(exc).__name__}: {exc}")
        if isinstance(decision, Rejection):
            letter = settlement.first_failure(decision)
            if not self._ledger.hold(pending, letter):
                settlement.dead_letter(pending, letter)
            return
        for earlier, letter in self._ledger.mapped():
            settlement.dead_letter(earlier, letter)
        if isinstance(decision, Skip):
            settlement.finish(pending, Outcome.SKIPPED, decision.reason)
        else:
            self._send(pending, event, decision, destination)

    def _decode_resolved(self) -> None:
        """Decode the messages whose schema ids were resolved since the last pass, in the order they were read."""
        for schema_id in self._parts.schemas.resolved():
            for pending in self._ledger.schema_arrived(schema_id):
                self._process(pending)

    # ---- 4. deliver (5. outcome and commit: pipeline.kafka.outcomes) ----------------------------

    def _send(self, pending: Pending, event: dict[str, Any], decision: Deliver, destination: Destination) -> None:
        record, partition = pending.record, pending.partition
        key = ordering_key(self._flow.ordering, record, event)
        if key is not None and len(self._parts.destinations) > 1:
            key = (destination.name, key)  # in order per destination: one that is paused holds no other's events
        # a user's share of the window (ledger); a partition's own key ("partition" ordering) has no one to share with
        partition.sent(pending, key if self._flow.ordering == "key" else None, self._ledger.key_share)
        self._parts.executor.submit(key, EventSend(
            pending, (record.topic() or "", record.partition(), record.offset()), decision.requests,
            event.get("timestamp"), destination.client, partition.stop, self._settlement.results,
            self._wall_clock))

    # ---- flow control and release ---------------------------------------------------------------

    def _repause(self, consumer: Consumer) -> None:
        """Pause partitions whose window is full or that have nothing more to read, or whose destination's Wigzo
        is down or rejects its token; resume them once below half the window."""
        to_pause, to_resume = self._ledger.repause(self._parts.destinations.accepting(), self._assignment.exhausted)
        if to_pause:
            consumer.pause(_partitions(to_pause))
        if to_resume:
            consumer.resume(_partitions(to_resume))

    def _release(self, keys: list[PartitionKey], *, commit: bool) -> None:
        """Finish the work already read for these partitions (bounded), make their dead letters durable,
        commit what is finished, and forget them.

        Work left unfinished is redone by the partition's next owner, and so is every finished message
        behind it (one commit offset per partition), so draining first is what keeps a clean rebalance
        free of duplicates. While a destination's Wigzo is down there is nothing of its to drain: stop at once."""
        partitions = [p for key in keys if (p := self._ledger.get(key)) is not None]
        held, because = self._ledger.let_go_held(keys)
        if awaiting := self._ledger.let_go_awaiting_schema(keys):
            held += awaiting
            because = self._parts.schemas.problem() or "they waited for the schema registry"
        if held:
            self.status.stats.held += held
            self.status.stats.held_because = because
        if commit and not self._failed:
            accepting = self._parts.destinations.accepting()
            self._wait_for_workers([partition for partition in partitions if accepting(partition.key)])
        for partition in partitions:
            partition.stop.set()  # no new attempts; requests on the wire complete or time out
        self._wait_for_workers(partitions)
        consumer = self.status.consumer  # set before any partition arrives
        if commit and not self._failed and consumer is not None:
            if not self._settlement.flush(timeout=DEAD_LETTER_PATIENCE):
                raise PipelineError(f"dead letters were not acknowledged within {DEAD_LETTER_PATIENCE:.0f}s; "
                                    "not committing")
            self._settlement.commit(consumer, keys, wait=True)
        # librdkafka keeps a partition's pause flag across unassign and assign: clear ours before letting go,
        # or a partition we get back later would stay paused with nobody to resume it
        if consumer is not None and (paused := [p.key for p in partitions if p.paused]):
            consumer.resume(_partitions(paused))
        self._ledger.release(keys)
        for key in keys:
            _forget_lag(key)

    def _report(self, consumer: Consumer, keys: list[PartitionKey]) -> None:
        """The gauges of what this member holds: lag (paused partitions' watermarks asked in the background,
        since they are not fetched), memory held, the longest per-user queue, messages awaiting the registry."""
        if keys:
            if self._highs is not None:
                self._highs.ask([key for key in keys if (p := self._ledger.get(key)) is not None and p.paused])
            known = self._highs.known if self._highs is not None else None
            for (topic, partition), lag in fetched_lag(consumer, keys, known).items():
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        metrics.PENDING_BYTES.set(self._ledger.memory())
        metrics.KEY_QUEUE_MAX.set(self._ledger.longest_queue())
        metrics.AWAITING_SCHEMA.set(self._ledger.awaiting_schema())

    def _wait_for_workers(self, partitions: list[Partition]) -> None:
        deadline = self._clock() + self._flow.drain_bound
        while any(p.in_executor for p in partitions) and self._clock() < deadline:
            time.sleep(0.01)
            self._settlement.settle()
        self._settlement.settle()


def _about(record: Message, event: dict[str, Any]) -> dict[str, Any]:
    """A log line's coordinates of the message it is about (never its payload)."""
    message_id = event.get("messageId")
    return message_fields(record.topic(), record.partition(), record.offset(),
                          message_id if isinstance(message_id, str) else None)




def _forget_lag(key: PartitionKey) -> None:
    """A released partition is no longer behind here (its new owner reports it); prometheus-client cannot
    remove a label set across worker processes, so it reads 0 rather than disappearing."""
    metrics.CONSUMER_LAG.labels(key[0], str(key[1])).set(0)


def _partitions(keys: Iterable[PartitionKey]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in keys]
