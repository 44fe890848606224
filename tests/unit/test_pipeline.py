"""`Pipeline` with fake parts (tests.fakes.pipeline_parts): no broker, no sockets.

Executors are the real `OrderedExecutor`. Every test drives the pipeline through `run` on a thread, with
bounded waits on what it has visibly done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

import pipeline.kafka.pipeline as pipeline_module
from pipeline.config import Settings
from pipeline.kafka.assignment import Assignment, GroupSubscription, OffsetRanges
from pipeline.kafka.executor import OrderedExecutor
from pipeline.kafka.ledger import PartitionKey
from pipeline.kafka.parts import Destinations, Flow, Parts
from pipeline.kafka.pipeline import Pipeline
from pipeline.model import (
    Aborted,
    DeadLetter,
    Delivered,
    DeliveryFailed,
    MappingDecision,
    Outcome,
    PipelineError,
    Rejection,
    Skip,
)
from tests.fakes.pipeline_parts import (
    WAIT,
    FakeClient,
    FakeConsumer,
    FakeDeadLetters,
    FakeDecoder,
    FakeDestination,
    FakeSchemas,
    Journal,
    map_event,
    message,
)

TOPIC = "events"
P0: PartitionKey = (TOPIC, 0)
P1: PartitionKey = (TOPIC, 1)
FLOW = replace(Flow.from_settings(Settings()), drain_bound=WAIT)


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Harness:
    def __init__(self, group: list[PartitionKey]) -> None:
        self.journal = Journal()
        self.consumer = FakeConsumer(self.journal, group)
        self.decoder = FakeDecoder()
        self.schemas = FakeSchemas(self.decoder)
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

    def build(self, assignment: Assignment | None = None, *, flow: Flow = FLOW,
              commit: bool = True, reader: Callable[[Message], Message | Skip] | None = None,
              clock: Callable[[], float] = time.monotonic,
              destinations: Destinations[FakeDestination] | None = None) -> Pipeline:
        """One destination (`default`, the harness's client) unless `destinations` says otherwise."""
        destinations = destinations or Destinations.one(FakeDestination("default", self.map_event, self.client))
        parts = Parts(decoder=self.decoder, schemas=self.schemas, destinations=destinations,
                      dead_letters=self.dead_letters, executor=OrderedExecutor(4, stall_after=3.0, name="test-send"),
                      shutdown=threading.Event())
        self.pipeline = Pipeline(parts, assignment or GroupSubscription((TOPIC,), ""), flow, reader=reader,
                                 commit=commit, clock=clock, wall_clock=lambda: 1_700_000_000.0)
        self.consumer.on_commit = self.pipeline.commit_answered
        return self.pipeline

    def start(self, pipeline: Pipeline, stop_when: Callable[[], bool] | None = None) -> None:
        def observe() -> bool:
            finished = pipeline.status.finished()
            self.observed.append((pipeline.status.stats.read, pipeline.status.outstanding(), finished))
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
        return self.pipeline.status.outcomes.by_detail()


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
    wait_for(lambda: pipeline.status.outcomes.total() == 4, "four outcomes")
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
    assert (pipeline.status.stats.duplicate_risk, pipeline.status.stats.aborted) == (0, 0)


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
    assert pipeline.status.stats.aborted == 1, "the delivery in flight was stopped, not waited for"
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

    assert pipeline.status.outcomes.totals() == {Outcome.DELIVERED: 2, Outcome.SKIPPED: 1, Outcome.DEAD_LETTERED: 6}
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.SKIPPED, "wigzo disabled for this event"): 1,
                            (Outcome.DEAD_LETTERED, "decode"): 3, (Outcome.DEAD_LETTERED, "mapping"): 2,
                            (Outcome.DEAD_LETTERED, "delivery"): 1}
    assert pipeline.status.outcomes.total() == pipeline.status.stats.read == 9
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
    assert letter == DeliveryFailed(rejection, 3, 1_699_999_000.0, 1_699_999_005.0, history)  # sent as it is
    assert h.outcomes() == {(Outcome.DELIVERED, ""): 2, (Outcome.DEAD_LETTERED, "delivery"): 1}


def test_an_aborted_delivery_stays_uncommitted(make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.client.results["0:1"] = Aborted(attempts=2)
    h.consumer.feed(message(P0, 0), message(P0, 1), message(P0, 2))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: len(h.client.delivered) == 2 and pipeline.status.stats.aborted == 1, "two delivered, one aborted")
    wait_for(lambda: h.consumer.last_commit(P0) == 1, "a commit up to 1")
    h.loops()
    h.stop()

    assert pipeline.status.stats.aborted == 1
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
    """The window counts unfinished messages (finished ones behind them cost only their offsets)."""
    h = make_harness([P0, P1])
    h.client.hold("0:0", "0:1", "0:2")  # three of the executor's four workers
    h.consumer.feed(*(message(P0, n) for n in range(6)))
    pipeline = h.build(flow=replace(FLOW, max_pending_per_partition=3))
    h.start(pipeline)
    wait_for(lambda: h.consumer.paused == {P0}, "P0 paused")
    h.consumer.feed(message(P0, 6), message(P1, 0))
    wait_for(lambda: "1:0" in h.client.delivered, "P1 still flows")
    h.loops()
    assert "0:6" not in h.decoder.seen
    assert {"0:3", "0:4", "0:5"} <= set(h.client.delivered), "finished behind the held ones"

    h.client.release("0:0")
    wait_for(lambda: "0:0" in h.client.delivered, "0:0 delivered")
    h.loops()
    assert "0:6" not in h.decoder.seen, "2 unfinished: not below half the window yet"
    h.client.release("0:1")
    wait_for(lambda: "0:6" in h.client.delivered, "P0 resumed")
    h.client.release("0:2")
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
    assert not pipeline.status.finished(), "not running yet"
    h.start(pipeline, stop_when=pipeline.status.finished)
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
    h.start(pipeline, stop_when=pipeline.status.finished)
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
    h.start(pipeline, stop_when=pipeline.status.finished)
    h.join()
    assert h.error is None
    assert h.consumer.assigned_partitions == []
    assert pipeline.status.stats.read == 0


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


def needs_schema(key: PartitionKey, offset: int, schema_id: int) -> Message:
    """A registry-framed message: it decodes once its schema id is resolved."""
    return message(key, offset, value=orjson.dumps({"schema": schema_id, "id": f"{key[1]}:{offset}",
                                                    "action": "deliver"}))


def test_a_registry_outage_holds_only_the_messages_that_need_it(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.schemas.failing_since = time.monotonic()
    h.consumer.feed(needs_schema(P0, 0, 5), message(P0, 1), needs_schema(P0, 2, 5), message(P1, 0),
                    needs_schema(P1, 1, 6))
    pipeline = h.build()
    h.start(pipeline)
    wait_for(lambda: {"0:1", "1:0"} <= set(h.client.delivered), "the JSON events flow meanwhile")
    h.loops()
    assert sorted(set(h.schemas.wanted)) == [5, 6] and h.client.delivered.count("0:0") == 0
    assert h.consumer.last_commit(P0) is None and h.consumer.last_commit(P1) == 1, "commits wait at the holders"
    assert any(reason.startswith("schema registry at http://registry: no answer: 3 messages wait")
               for reason in pipeline.status.readiness())
    assert h.dead_letters.letters == []

    h.schemas.answer(5)
    wait_for(lambda: {"0:0", "0:2"} <= set(h.client.delivered), "decoded once the id is resolved")
    assert h.client.delivered.index("0:0") < h.client.delivered.index("0:2"), "in the order they were read"
    h.schemas.answer(6)
    wait_for(lambda: "1:1" in h.client.delivered, "the other id too")
    wait_for(lambda: h.consumer.last_commit(P0) == 3 and h.consumer.last_commit(P1) == 2, "commits catch up")
    h.stop()
    assert pipeline.status.outcomes.totals()[Outcome.DELIVERED] == 5


def test_a_batch_gives_up_on_a_registry_silent_for_its_patience_leaving_the_rest_uncommitted(
        make_harness: Callable[..., Harness]) -> None:
    """A run that must end (replay, redrive, --exit-when-idle) stops once only messages waiting for a registry
    silent for `registry_patience` are left; a long-running member never does (it has no stop condition)."""
    h = make_harness()
    now = [1000.0]
    h.schemas.clock = lambda: now[0]
    h.schemas.failing_since = now[0]
    h.consumer.feed(message(P0, 0), needs_schema(P0, 1, 5), message(P0, 2))
    pipeline = h.build(OffsetRanges({P0: (0, 3)}), flow=replace(FLOW, registry_patience=120.0))
    status = pipeline.status
    h.start(pipeline, stop_when=lambda: status.finished() or status.stuck())
    wait_for(lambda: {"0:0", "0:2"} <= set(h.client.delivered), "the rest delivered")
    h.loops()
    assert h.thread is not None and h.thread.is_alive(), "not stuck before the registry's patience is spent"
    now[0] += 120.0
    h.join()
    assert h.error is None
    assert status.stats.held == 1 and status.stats.held_because.startswith("schema registry at http://registry")
    assert h.consumer.last_commit(P0) is None or h.consumer.last_commit(P0) <= 1, "never past the held message"
    assert h.dead_letters.letters == []


def test_a_destination_not_accepting_work_pauses_only_its_own_partitions_and_holds_none_of_the_others_events(
        make_harness: Callable[..., Harness]) -> None:
    """Two destinations own a topic each; one user's events in both. brand_b's Wigzo stops taking work while that
    user's event is held there: brand_a goes on delivering that user's events, only brand_b's partition pauses,
    and readiness names brand_b."""
    brand_a, brand_b = ("brand-a", 0), ("brand-b", 0)
    h = make_harness([brand_a, brand_b])
    other = FakeClient()
    other.hold("0:100")
    destinations = Destinations([(FakeDestination("brand_a", h.map_event, h.client), ("brand-a",)),
                                 (FakeDestination("brand_b", h.map_event, other), ("^brand-b.*",))])
    pipeline = h.build(GroupSubscription(("brand-a", "brand-b"), ""), destinations=destinations)
    h.consumer.feed(message(brand_b, 100, record_key=b"user-1"))
    h.start(pipeline)
    wait_for(lambda: other.started == ["0:100"], "brand_b's event on its way")
    other.accepting = False
    h.consumer.feed(*(message(brand_a, n, record_key=b"user-1") for n in range(5)),
                    message(brand_b, 101, record_key=b"user-1"))
    wait_for(lambda: len(h.client.delivered) == 5, "brand_a delivering the same user's events")
    wait_for(lambda: brand_b in h.consumer.paused, "brand_b's partition paused")
    assert brand_a not in h.consumer.paused
    assert pipeline.status.readiness() == ["Wigzo (brand_b): circuit open: Wigzo is failing"]
    other.accepting = True
    other.release_all()
    wait_for(lambda: other.delivered == ["0:100", "0:101"], "brand_b resuming, in order")
    h.stop()
    other.release_all()


def test_readiness_says_why_this_member_cannot_take_work(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness()
    pipeline = harness.build()
    assert pipeline.status.readiness() == ["not in the consumer group yet"]
    harness.start(pipeline)
    wait_for(lambda: pipeline.status.joined, "the assignment")
    assert pipeline.status.readiness() == []
    harness.client.accepting = False
    harness.dead_letters.failure = RuntimeError("topic deleted")
    assert pipeline.status.readiness() == ["Wigzo: circuit open: Wigzo is failing", "dead-letter topic: topic deleted"]
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
    assert pipeline.status.readiness() == ["Kafka: missing topic: no topic events"], \
        "the metadata answer ended the outage"
    h.stop()


# ---- a streak of identical mapping rejections ----------------------------------------------------

STREAK = replace(FLOW, systemic_threshold=3)


def dead_lettered(h: Harness) -> list[int]:
    return sorted(record.offset() for record, _ in h.dead_letters.letters)


def test_a_streak_of_identical_mapping_rejections_is_held_until_an_event_maps(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness()
    h.consumer.feed(message(P0, 0), *(message(P0, n, "reject") for n in range(1, 7)))
    pipeline = h.build(flow=STREAK)
    h.start(pipeline)
    wait_for(lambda: pipeline.status.held() == 4, "the streak's events from the third on held")
    h.loops()
    assert dead_lettered(h) == [1, 2], "only the events before the threshold are dead-lettered"
    assert h.consumer.last_commit(P0) == 3, "nothing past the first held event is committed"
    assert len(pipeline.status.readiness()) == 1, "the streak is the one reason"
    assert pipeline.status.readiness()[0].startswith("the mapping rejected")
    assert "rejected 6 events in a row the same way (Unmappable at event)" in pipeline.status.readiness()[0]
    assert "4 held uncommitted" in pipeline.status.readiness()[0]

    h.consumer.feed(message(P0, 7))  # maps: the mapping works, so the held events were bad data after all
    wait_for(lambda: h.consumer.last_commit(P0) == 8, "everything committed")
    assert dead_lettered(h) == [1, 2, 3, 4, 5, 6]
    assert pipeline.status.readiness() == []
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
    assert pipeline.status.held() == 0


def test_a_released_partition_leaves_its_held_events_uncommitted(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([P0, P1])
    h.consumer.feed(*(message(P0, n, "reject") for n in range(5)))
    pipeline = h.build(flow=STREAK)
    h.start(pipeline)
    wait_for(lambda: pipeline.status.held() == 3, "2, 3 and 4 held")
    revoked = h.consumer.rebalance("revoke", [P0])
    assert revoked.wait(WAIT)
    h.stop()
    assert dead_lettered(h) == [0, 1]
    assert h.consumer.last_commit(P0) == 2, "the next owner reads the held events again"
    assert (pipeline.status.stats.held, pipeline.status.held()) == (3, 0)
    assert "Unmappable at event" in pipeline.status.stats.held_because
    assert pipeline.status.readiness() == []


def test_a_range_left_with_only_held_events_is_stuck_not_finished(
        make_harness: Callable[..., Harness], commit_every_loop: None) -> None:
    h = make_harness([])
    h.consumer.feed(*(message(P0, n, "reject") for n in range(6)))
    pipeline = h.build(OffsetRanges({P0: (0, 6)}), flow=STREAK)
    h.start(pipeline, stop_when=lambda: pipeline.status.finished() or pipeline.status.stuck())
    h.join()  # stops by itself, instead of waiting for an event that would end the streak
    assert h.error is None
    assert not any(finished for _, _, finished in h.observed), "never finished: it stopped because stuck"
    assert dead_lettered(h) == [0, 1]
    assert h.consumer.last_commit(P0) == 2
    assert pipeline.status.stats.held == 4


def test_liveness_counts_from_the_start_before_the_first_poll(make_harness: Callable[..., Harness]) -> None:
    """Probes start before the loop's first poll: the member must not look stalled since the host booted."""
    pipeline = make_harness().build(clock=lambda: 42.0)
    assert pipeline.status.last_poll == 42.0


def test_a_refused_asynchronous_commit_is_said_once_and_retried_until_it_lands(
        make_harness: Callable[..., Harness], commit_every_loop: None, caplog: pytest.LogCaptureFixture) -> None:
    h = make_harness()
    h.consumer.refuse_commits = KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalance in progress")
    h.consumer.feed(message(P0, 0), message(P0, 1))
    pipeline = h.build()
    with caplog.at_level(logging.INFO, "pipeline.kafka.outcomes"):
        h.start(pipeline)
        wait_for(lambda: len(h.client.delivered) == 2, "both delivered")
        h.loops(20)
        assert h.consumer.commits == [], "every commit refused so far"
        h.consumer.refuse_commits = None
        wait_for(lambda: h.consumer.last_commit(P0) == 2, "the position committed once the broker takes it")
        h.loops()
    h.stop()
    failed = [r for r in caplog.records if "commit failed" in r.getMessage()]
    assert len(failed) == 1 and "rebalance in progress" in failed[0].getMessage(), "said once, not every second"
    assert any("commits succeed again" in r.getMessage() for r in caplog.records)
    assert h.consumer.commits_for(P0) == [2], "sent again only because it was refused, and once it landed, never"
