"""Which offset of a partition is safe to commit.

Messages finish out of order (different users are delivered in parallel), but a commit says "all
before this offset is done". So we commit only up to the lowest unfinished offset, never past it.
"""

from __future__ import annotations

from collections import deque


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
    def commit_position(self) -> int | None:
        """The offset to commit (the next one to read after a restart), or None if nothing finished yet."""
        return self._next_commit
