"""The commit position never passes an unfinished message, whatever order messages finish in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.kafka.checkpoint import PartitionOffsets


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
