"""The commit position never passes an unfinished message, whatever order messages finish in; the ledger
reports only positions that moved since the last commit, forgets a partition completely when it goes, and
pauses a partition whose window is full until it is below half of it."""

from __future__ import annotations

import hashlib
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.kafka.ledger import (
    MESSAGE_OVERHEAD,
    OFFSET_COST,
    PartitionKey,
    PartitionLedger,
    PartitionOffsets,
    Pending,
)

P0: PartitionKey = ("events", 0)
P1: PartitionKey = ("events", 1)
P2: PartitionKey = ("other", 0)


# ---- PartitionOffsets ---------------------------------------------------------------------------


def test_commit_waits_for_the_lowest_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        offsets.read(offset)
    assert offsets.commit_position is None
    offsets.finish(12)
    offsets.finish(11)
    assert offsets.commit_position is None, "10 is still running"
    offsets.finish(10)
    assert offsets.commit_position == 13
    assert offsets.outstanding == 1
    offsets.finish(13)
    assert offsets.commit_position == 14
    assert offsets.outstanding == 0


def test_gaps_from_compaction_or_transactions_do_not_block() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 9, 20):
        offsets.read(offset)
    offsets.finish(9)
    offsets.finish(5)
    assert offsets.commit_position == 10


@given(st.data())
def test_commit_position_is_exactly_the_first_unfinished(data: st.DataObject) -> None:
    read = sorted(data.draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=60)))
    finished_order = data.draw(st.permutations(read))
    stop_after = data.draw(st.integers(0, len(read)))
    offsets = PartitionOffsets()
    for offset in read:
        offsets.read(offset)
    finished = set(finished_order[:stop_after])
    for offset in finished_order[:stop_after]:
        offsets.finish(offset)
    unfinished = [o for o in read if o not in finished]
    prefix_done = [o for o in read if not unfinished or o < unfinished[0]]
    expected = prefix_done[-1] + 1 if prefix_done else None
    assert offsets.commit_position == expected
    assert offsets.outstanding == len(read) - len(prefix_done)


# ---- PartitionLedger ----------------------------------------------------------------------------


class Checkpoint:
    """The ledger driven by (partition, offset) as the loop drives it: each read keeps its Pending, which is
    what the loop finishes later (from a worker's result or a dead letter's acknowledgement)."""

    def __init__(self, window: int = 1000, window_bytes: int = 10**9) -> None:
        self.ledger = PartitionLedger(window, window_bytes, streak_threshold=10)
        self._pending: dict[tuple[PartitionKey, int], Pending] = {}

    def track(self, key: PartitionKey) -> None:
        self.ledger.assign([key])

    def forget(self, keys: list[PartitionKey]) -> None:
        self.ledger.release(keys)

    def read(self, key: PartitionKey, offset: int, value: bytes = b"{}", user: bytes | None = None) -> Pending:
        partition = self.ledger.get(key)
        assert partition is not None
        pending = self._pending[(key, offset)] = partition.read(offset, Record(value, user))  # type: ignore[arg-type]
        return pending

    def send(self, key: PartitionKey, offset: int, user: object) -> None:
        pending = self._pending[(key, offset)]
        pending.partition.sent(pending, user, self.ledger.key_share)

    def finish(self, key: PartitionKey, offset: int) -> None:
        if (pending := self._pending.pop((key, offset), None)) is not None:
            if pending.key is not None:
                pending.partition.returned(pending, self.ledger.key_share)
            pending.partition.finish(pending)

    def outstanding(self, key: PartitionKey | None = None) -> int:
        return self.ledger.outstanding(key)

    def due(self, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        return self.ledger.due(keys)

    def committed(self, positions: dict[PartitionKey, int]) -> None:
        self.ledger.committed(positions)


class Record:
    """The two things the ledger reads of a message: its value and key, for the memory it holds."""

    def __init__(self, value: bytes, key: bytes | None) -> None:
        self._value, self._key = value, key

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key


def tracked(*keys: PartitionKey, window: int = 1000, window_bytes: int = 10**9) -> Checkpoint:
    checkpoint = Checkpoint(window, window_bytes)
    for key in keys:
        checkpoint.track(key)
    return checkpoint


def test_due_never_passes_an_unfinished_offset() -> None:
    checkpoint = tracked(P0)
    for offset in range(5):
        checkpoint.read(P0, offset)
    for offset in (4, 0, 3, 1):
        checkpoint.finish(P0, offset)
    assert checkpoint.due([P0]) == {P0: 2}, "2 is still running"
    checkpoint.finish(P0, 2)
    assert checkpoint.due([P0]) == {P0: 5}


def test_due_is_empty_until_something_finished() -> None:
    checkpoint = tracked(P0, P1)
    assert checkpoint.due([P0, P1]) == {}
    checkpoint.read(P0, 7)
    assert checkpoint.due([P0, P1]) == {}
    checkpoint.finish(P0, 7)
    assert checkpoint.due([P0, P1]) == {P0: 8}


def test_due_returns_only_positions_that_moved_since_committed() -> None:
    checkpoint = tracked(P0, P1)
    for key in (P0, P1):
        for offset in range(3):
            checkpoint.read(key, offset)
    checkpoint.finish(P0, 0)
    checkpoint.finish(P1, 0)
    assert checkpoint.due([P0, P1]) == {P0: 1, P1: 1}
    checkpoint.committed({P0: 1, P1: 1})
    assert checkpoint.due([P0, P1]) == {}
    checkpoint.finish(P1, 2)  # behind the unfinished 1: the position does not move
    assert checkpoint.due([P0, P1]) == {}
    checkpoint.finish(P1, 1)
    assert checkpoint.due([P0, P1]) == {P1: 3}
    assert checkpoint.due([P0]) == {}, "only the partitions asked about"
    checkpoint.committed({P1: 3})
    checkpoint.finish(P0, 1)
    assert checkpoint.due([P0, P1]) == {P0: 2}


def test_an_uncommitted_position_stays_due() -> None:
    """A commit that failed is not recorded as committed, so the next commit retries the same position."""
    checkpoint = tracked(P0)
    checkpoint.read(P0, 0)
    checkpoint.finish(P0, 0)
    assert checkpoint.due([P0]) == {P0: 1}
    assert checkpoint.due([P0]) == {P0: 1}


def test_finish_on_an_unknown_or_forgotten_partition_is_ignored() -> None:
    checkpoint = tracked(P0)
    checkpoint.read(P0, 0)
    checkpoint.finish(P1, 0)  # never tracked
    checkpoint.forget([P0])
    checkpoint.finish(P0, 0)  # e.g. a dead letter acknowledged after its partition was revoked
    assert checkpoint.outstanding() == 0
    assert checkpoint.due([P0, P1]) == {}
    checkpoint.committed({P0: 1, P1: 1})  # committing an untracked partition is ignored too
    checkpoint.track(P1)
    checkpoint.read(P1, 0)
    checkpoint.finish(P1, 0)
    assert checkpoint.due([P1]) == {P1: 1}, "the ignored commit must not hide P1's first real position"


def test_forget_drops_the_committed_memory_too() -> None:
    checkpoint = tracked(P0, P1)
    for key in (P0, P1):
        checkpoint.read(key, 0)
        checkpoint.finish(key, 0)
    checkpoint.committed({P0: 1, P1: 1})
    checkpoint.forget([P0])
    assert checkpoint.due([P0, P1]) == {}
    # assigned again (the group committed 1 meanwhile, or another member moved it on): starts fresh
    checkpoint.track(P0)
    checkpoint.read(P0, 0)
    checkpoint.finish(P0, 0)
    assert checkpoint.due([P0, P1]) == {P0: 1}, "position 1 must be committed again after a re-assignment"
    checkpoint.read(P1, 1)
    checkpoint.finish(P1, 1)
    assert checkpoint.due([P0, P1]) == {P0: 1, P1: 2}, "P1 kept its own memory"


def test_track_keeps_an_existing_partition() -> None:
    checkpoint = tracked(P0)
    checkpoint.read(P0, 0)
    checkpoint.track(P0)
    assert checkpoint.outstanding(P0) == 1


def test_outstanding_per_partition_and_in_total() -> None:
    checkpoint = tracked(P0, P1, P2)
    for offset in range(4):
        checkpoint.read(P0, offset)
    for offset in (10, 11):
        checkpoint.read(P1, offset)
    assert (checkpoint.outstanding(P0), checkpoint.outstanding(P1), checkpoint.outstanding(P2)) == (4, 2, 0)
    assert checkpoint.outstanding() == 6
    checkpoint.finish(P0, 1)  # behind 0: still outstanding
    checkpoint.finish(P1, 10)
    assert (checkpoint.outstanding(P0), checkpoint.outstanding(P1)) == (4, 1)
    checkpoint.finish(P0, 0)
    assert (checkpoint.outstanding(P0), checkpoint.outstanding(P1)) == (2, 1)
    assert checkpoint.outstanding() == 3
    assert checkpoint.outstanding(("unknown", 9)) == 0
    checkpoint.forget([P0])
    assert checkpoint.outstanding(P0) == 0
    assert checkpoint.outstanding() == 1


@given(st.data())
def test_due_never_passes_the_lowest_unfinished_offset_and_never_goes_back(data: st.DataObject) -> None:
    """Reads (increasing, with gaps) and finishes (any order) interleaved across 1-3 partitions, with commits
    now and then: after each finish every due position is <= the partition's lowest unfinished offset (or the
    last read + 1), is exactly one past its finished prefix, and never decreases."""
    keys = [P0, P1, P2][:data.draw(st.integers(1, 3), label="partitions")]
    to_read = {key: sorted(data.draw(st.sets(st.integers(0, 500), min_size=1, max_size=25), label=f"read {key}"))
               for key in keys}
    checkpoint = tracked(*keys)
    read: dict[PartitionKey, list[int]] = {key: [] for key in keys}
    unfinished: dict[PartitionKey, set[int]] = {key: set() for key in keys}
    last_due: dict[PartitionKey, int] = {}
    committed: dict[PartitionKey, int] = {}

    while any(unfinished.values()) or any(len(read[k]) < len(to_read[k]) for k in keys):
        steps = [("read", key, to_read[key][len(read[key])]) for key in keys if len(read[key]) < len(to_read[key])]
        steps += [("finish", key, offset) for key in keys for offset in sorted(unfinished[key])]
        step, key, offset = data.draw(st.sampled_from(steps))
        if step == "read":
            checkpoint.read(key, offset)
            read[key].append(offset)
            unfinished[key].add(offset)
            continue
        checkpoint.finish(key, offset)
        unfinished[key].discard(offset)

        due = checkpoint.due(keys)
        for k in keys:
            bound = min(unfinished[k]) if unfinished[k] else (read[k][-1] + 1 if read[k] else None)
            done_prefix = [o for o in read[k] if bound is None or o < bound]
            expected = done_prefix[-1] + 1 if done_prefix else None
            if expected is None or expected == committed.get(k):
                assert k not in due
                continue
            assert due[k] == expected
            assert bound is not None and due[k] <= bound
            assert due[k] >= last_due.get(k, due[k])
            last_due[k] = due[k]
        if due and data.draw(st.booleans(), label="commit"):
            checkpoint.committed(due)
            committed.update(due)
            assert checkpoint.due(keys) == {}
    assert checkpoint.outstanding() == 0
    assert {k: last_due[k] for k in keys} == {k: to_read[k][-1] + 1 for k in keys}


ACCEPTING = lambda key: True  # noqa: E731 - every partition's destination takes work


def test_a_full_window_pauses_until_below_half_of_it() -> None:
    checkpoint = tracked(P0, P1, window=4)
    for offset in range(4):
        checkpoint.read(P0, offset)
    never_exhausted = lambda key: False  # noqa: E731
    assert checkpoint.ledger.repause(ACCEPTING, never_exhausted) == ([P0], [])
    assert checkpoint.ledger.repause(ACCEPTING, never_exhausted) == ([], []), "said once"
    checkpoint.finish(P0, 0)
    assert checkpoint.ledger.repause(ACCEPTING, never_exhausted) == ([], []), "3 left: not below half the window"
    checkpoint.finish(P0, 1)
    assert checkpoint.ledger.repause(ACCEPTING, never_exhausted) == ([], [P0])


def test_everything_pauses_while_delivery_does_not_accept_work_and_exhausted_partitions_stay_paused() -> None:
    checkpoint = tracked(P0, P1)
    assert checkpoint.ledger.repause(lambda key: False, lambda key: False) == ([P0, P1], [])
    assert checkpoint.ledger.all_paused()
    assert checkpoint.ledger.repause(ACCEPTING, lambda key: key == P1) == ([], [P0])
    assert not checkpoint.ledger.all_paused()


def test_only_the_partitions_of_a_destination_not_accepting_work_pause() -> None:
    """Two destinations own a topic each: one whose token is rejected pauses its partitions only."""
    other = ("brand-b", 0)
    checkpoint = tracked(P0, P1, other)
    brand_b_down = lambda key: key[0] != "brand-b"  # noqa: E731
    assert checkpoint.ledger.repause(brand_b_down, NEVER_EXHAUSTED) == ([other], [])
    assert not checkpoint.ledger.get(P0).paused and not checkpoint.ledger.get(P1).paused
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], [other]), "resumed once it accepts again"


def test_release_marks_the_partition_so_late_results_change_nothing() -> None:
    checkpoint = tracked(P0)
    checkpoint.read(P0, 0)
    (partition,) = checkpoint.ledger.release([P0, P1])
    assert partition.released and partition.key == P0
    checkpoint.track(P0)
    checkpoint.read(P0, 0)
    assert checkpoint.ledger.get(P0) is not partition, "assigned again: a fresh partition"
    assert checkpoint.outstanding(P0) == 1


NEVER_EXHAUSTED = lambda key: False  # noqa: E731


def test_a_users_queue_past_its_share_does_not_fill_the_partitions_window() -> None:
    """A hot user's events wait in order; only a tenth of the window counts them, so the partition goes on being
    read for everyone else until the others fill it."""
    checkpoint = tracked(P0, window=20)
    assert checkpoint.ledger.key_share == 2
    for offset in range(15):
        checkpoint.read(P0, offset)
        checkpoint.send(P0, offset, "hot user")
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], []), "15 unfinished, but 13 past the share"
    for offset in range(15, 32):
        checkpoint.read(P0, offset)
        checkpoint.send(P0, offset, f"user {offset}")
    assert checkpoint.ledger.get(P0).counted == 19  # type: ignore[union-attr]
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], [])
    checkpoint.read(P0, 32)
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([P0], []), "everyone else filled the window"
    for offset in range(15, 33):
        checkpoint.finish(P0, offset)
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], [P0])
    assert checkpoint.due([P0]) == {}, "commits still wait for the hot user's oldest event"
    for offset in range(15):
        checkpoint.finish(P0, offset)
    assert checkpoint.due([P0]) == {P0: 33}
    assert checkpoint.ledger.get(P0).counted == 0  # type: ignore[union-attr]


def test_the_members_window_in_bytes_pauses_every_partition_until_below_half() -> None:
    checkpoint = tracked(P0, P1, window_bytes=38_000)
    checkpoint.read(P0, 0, value=b"x" * 9_000)  # counted twice (the value and its decoded copy), plus overheads
    assert checkpoint.ledger.memory() == 2 * 9_000 + MESSAGE_OVERHEAD + OFFSET_COST
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], [])
    checkpoint.read(P1, 0, value=b"x" * 9_000)
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([P0, P1], []), "over 38,000 bytes: all pause"
    checkpoint.finish(P1, 0)
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], []), "19,124: not below half yet"
    checkpoint.read(P1, 1, value=b"")
    checkpoint.finish(P0, 0)
    assert checkpoint.ledger.memory() == MESSAGE_OVERHEAD + OFFSET_COST
    assert checkpoint.ledger.repause(ACCEPTING, NEVER_EXHAUSTED) == ([], [P0, P1])


def test_finished_offsets_behind_an_unfinished_one_cost_memory_too() -> None:
    checkpoint = tracked(P0)
    for offset in range(11):
        checkpoint.read(P0, offset)
    for offset in range(1, 11):
        checkpoint.finish(P0, offset)
    assert checkpoint.ledger.memory() == 2 * len(b"{}") + MESSAGE_OVERHEAD + 11 * OFFSET_COST


def test_a_hot_key_is_logged_once_by_its_hash_never_by_itself(caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = tracked(P0, window=20)
    with caplog.at_level(logging.INFO, "pipeline.kafka.ledger"):
        for offset in range(10):
            checkpoint.read(P0, offset)
            checkpoint.send(P0, offset, b"user-42")
        checkpoint.read(P0, 10)
        checkpoint.send(P0, 10, b"user-7")
        assert checkpoint.ledger.longest_queue() == 10
        assert checkpoint.ledger.longest_queue() == 10
        for offset in range(9):
            checkpoint.finish(P0, offset)
        assert checkpoint.ledger.longest_queue() == 1
    text = caplog.text
    assert text.count("holds 10 of the 11 unfinished events of events[0]") == 1, "said once per episode"
    assert hashlib.sha256(b"user-42").hexdigest()[:12] in text and "user-42" not in text
    assert "back within its share" in text


def test_an_asynchronous_commit_is_due_again_only_when_it_failed() -> None:
    checkpoint = tracked(P0)
    checkpoint.read(P0, 0)
    checkpoint.finish(P0, 0)
    assert checkpoint.due([P0]) == {P0: 1}
    checkpoint.ledger.committing({P0: 1})
    assert checkpoint.due([P0]) == {}, "on its way: not sent twice"
    checkpoint.ledger.commit_answered(P0, 1, ok=False)
    assert checkpoint.due([P0]) == {P0: 1}, "refused: due again"
    checkpoint.ledger.committing({P0: 1})
    checkpoint.read(P0, 1)
    checkpoint.finish(P0, 1)
    assert checkpoint.due([P0]) == {P0: 2}, "a newer position goes out while the older one is answered"
    checkpoint.ledger.committing({P0: 2})
    checkpoint.ledger.commit_answered(P0, 1, ok=True)
    assert checkpoint.due([P0]) == {}
    checkpoint.ledger.commit_answered(P0, 2, ok=True)
    assert checkpoint.due([P0]) == {} and checkpoint.ledger.get(P0).committed == 2  # type: ignore[union-attr]


def test_events_awaiting_a_schema_come_back_in_read_order_except_released_ones() -> None:
    checkpoint = tracked(P0, P1)
    waiting = [checkpoint.read(P0, 0), checkpoint.read(P1, 0), checkpoint.read(P0, 1)]
    for pending in waiting:
        checkpoint.ledger.await_schema(5, pending)
    checkpoint.ledger.await_schema(6, checkpoint.read(P1, 1))
    assert checkpoint.ledger.awaiting_schema() == 4
    assert checkpoint.ledger.let_go_awaiting_schema([P1]) == 2
    checkpoint.forget([P1])
    assert checkpoint.ledger.schema_arrived(5) == [waiting[0], waiting[2]]
    assert checkpoint.ledger.schema_arrived(6) == [] and checkpoint.ledger.awaiting_schema() == 0
