"""The commit position never passes an unfinished message, whatever order messages finish in; `Checkpoint`
reports only positions that moved since the last commit, and forgets a partition completely when it goes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.kafka.checkpoint import Checkpoint, PartitionKey, PartitionOffsets

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


# ---- Checkpoint ---------------------------------------------------------------------------------


def tracked(*keys: PartitionKey) -> Checkpoint:
    checkpoint = Checkpoint()
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
