"""Which offset of a partition is safe to commit.

Messages finish out of order (different users are delivered in parallel), but a commit says "all
before this offset is done". So we commit only up to the lowest unfinished offset, never past it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class PartitionOffsets:
    """Offsets read from one partition, in read order, with the finished ones marked."""

    __slots__ = ("_pending", "_done", "_next_commit")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next_commit: int | None = None

    def read(self, offset: int) -> None:
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self._next_commit = head + 1

    @property
    def outstanding(self) -> int:
        """Messages read and not yet finished, plus finished ones stuck behind an unfinished one."""
        return len(self._pending)

    @property
    def unfinished(self) -> int:
        return len(self._pending) - len(self._done)

    @property
    def commit_position(self) -> int | None:
        """The offset to commit (the next one to read after a restart), or None if nothing finished yet."""
        return self._next_commit


PartitionKey = tuple[str, int]


class Checkpoint:
    """What this consumer read and finished per partition, and what it committed: the one place that decides
    which offsets may be committed. Used from the polling thread only."""

    __slots__ = ("_offsets", "_committed")

    def __init__(self) -> None:
        self._offsets: dict[PartitionKey, PartitionOffsets] = {}
        self._committed: dict[PartitionKey, int] = {}

    def track(self, key: PartitionKey) -> None:
        self._offsets.setdefault(key, PartitionOffsets())

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._offsets.pop(key, None)
            self._committed.pop(key, None)

    def read(self, key: PartitionKey, offset: int) -> None:
        self._offsets[key].read(offset)

    def finish(self, key: PartitionKey, offset: int) -> None:
        if (offsets := self._offsets.get(key)) is not None:
            offsets.finish(offset)

    def outstanding(self, key: PartitionKey | None = None) -> int:
        if key is not None:
            offsets = self._offsets.get(key)
            return 0 if offsets is None else offsets.outstanding
        return sum(offsets.outstanding for offsets in self._offsets.values())

    def unfinished(self) -> int:
        """Messages read and not yet finished, over all partitions."""
        return sum(offsets.unfinished for offsets in self._offsets.values())

    def due(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """Commit positions that moved since the last commit, for the given partitions."""
        due = {}
        for key in keys:
            offsets = self._offsets.get(key)
            position = None if offsets is None else offsets.commit_position
            if position is not None and position != self._committed.get(key):
                due[key] = position
        return due

    def committed(self, positions: dict[PartitionKey, int]) -> None:
        for key, position in positions.items():
            if key in self._offsets:
                self._committed[key] = position
