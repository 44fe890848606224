"""The partition ledger: what this member holds of each assigned partition, and which offset is safe to commit.

Messages finish out of order (different users are delivered in parallel), but a commit says "all before this
offset is done". So a partition commits only up to its lowest unfinished offset, never past it. The ledger
also knows which partitions are paused (their window of unfinished messages is full), what was committed,
and which events a mapping streak holds back (pipeline.kafka.mapping_streak). Pure bookkeeping, used from the
polling thread only, except `Partition.stop` and `in_executor`'s reads by workers.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Message

from pipeline.kafka.mapping_streak import MappingStreak
from pipeline.model import DeadLetter
from pipeline.telemetry import metrics

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]


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


@dataclass(eq=False)
class Partition:
    """One assigned partition. A released one is kept by the work still pointing at it, and ignored: what
    finishes after its release is its next owner's to redo."""

    key: PartitionKey
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    stop: threading.Event = field(default_factory=threading.Event)  # set on release: no new attempts
    in_executor: int = 0  # events handed to the executor whose result has not come back
    paused: bool = False
    committed: int | None = None
    released: bool = False

    def read(self, offset: int, record: Message) -> Pending:
        self.offsets.read(offset)
        return Pending(self, offset, record)

    def finish(self, offset: int) -> None:
        if not self.released:
            self.offsets.finish(offset)


@dataclass(frozen=True, slots=True)
class Pending:
    """A message read and not finished: where it was read (its own offset, which a redrive reader's record does
    not carry) and the record to process."""

    partition: Partition
    offset: int
    record: Message


Held = tuple[Pending, DeadLetter]  # an event a mapping streak holds, with the letter it gets if the streak ends


class PartitionLedger:
    def __init__(self, window: int, streak_threshold: int) -> None:
        """`window`: unfinished messages per partition before it pauses; it resumes below half of it."""
        self._partitions: dict[PartitionKey, Partition] = {}
        self._window = window
        self.streak: MappingStreak[Held] = MappingStreak(streak_threshold)

    def assign(self, keys: Iterable[PartitionKey]) -> None:
        for key in keys:
            self._partitions.setdefault(key, Partition(key))

    def get(self, key: PartitionKey) -> Partition | None:
        return self._partitions.get(key)

    def keys(self) -> list[PartitionKey]:
        return list(self._partitions)

    def outstanding(self, key: PartitionKey | None = None) -> int:
        """Messages read and not committable yet, of one partition or all."""
        if key is not None:
            partition = self._partitions.get(key)
            return 0 if partition is None else partition.offsets.outstanding
        return sum(partition.offsets.outstanding for partition in self._partitions.values())

    def unfinished(self) -> int:
        return sum(partition.offsets.unfinished for partition in self._partitions.values())

    def repause(self, accepting: bool, exhausted: Callable[[PartitionKey], bool],
                ) -> tuple[list[PartitionKey], list[PartitionKey]]:
        """Which partitions to pause and which to resume now: all while delivery is not accepting work, those
        with nothing more to read, and those whose window is full (until below half of it)."""
        to_pause, to_resume = [], []
        for key, partition in self._partitions.items():
            pending = partition.offsets.outstanding
            wanted = (not accepting or exhausted(key) or pending >= self._window
                      or (partition.paused and pending > self._window // 2))
            if wanted != partition.paused:
                (to_pause if wanted else to_resume).append(key)
                partition.paused = wanted
        return to_pause, to_resume

    def hold(self, pending: Pending, letter: DeadLetter) -> bool:
        """Count a mapping rejection; True when the event is held (the same rejection has become systemic, said
        once per streak) rather than to be dead-lettered now."""
        if not self.streak.rejected(letter.rejection, (pending, letter)):
            return False
        metrics.MAPPING_HELD.set(self.streak.held)
        if self.streak.held == 1:
            log.error("%s", self.streak.problem())
        return True

    def mapped(self) -> list[Held]:
        """An event mapped, so the streak is over: what it held was bad data after all, to dead-letter now."""
        held = self.streak.mapped()
        if held:
            log.warning("an event mapped again: the %d events held by the mapping streak were bad data after all; "
                        "dead-lettering them", len(held))
            metrics.MAPPING_HELD.set(0)
        return held

    def let_go_held(self, keys: Iterable[PartitionKey]) -> tuple[int, str]:
        """Forget the events held in these partitions (released: uncommitted, their next owner maps them again):
        how many, and the streak's reason as it was."""
        released, because = set(keys), self.streak.problem()
        held = self.streak.let_go(lambda item: item[0].partition.key not in released)
        if held:
            metrics.MAPPING_HELD.set(self.streak.held)
            log.warning("leaving %d events held by the mapping streak uncommitted in %s: whoever reads them next "
                        "maps them again", len(held), describe(sorted(released)))
        return len(held), because

    def all_paused(self) -> bool:
        return all(partition.paused for partition in self._partitions.values())

    def due(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """Commit positions that moved since the last commit, for the given partitions."""
        due = {}
        for key in keys:
            partition = self._partitions.get(key)
            position = None if partition is None else partition.offsets.commit_position
            if partition is not None and position is not None and position != partition.committed:
                due[key] = position
        return due

    def committed(self, positions: dict[PartitionKey, int]) -> None:
        for key, position in positions.items():
            if (partition := self._partitions.get(key)) is not None:
                partition.committed = position

    def stop_all(self) -> None:
        """No new attempts anywhere: the loop is ending."""
        for partition in self._partitions.values():
            partition.stop.set()

    def release(self, keys: Iterable[PartitionKey]) -> list[Partition]:
        """Forget these partitions; the ones that were held come back, marked released."""
        released = []
        for key in keys:
            if (partition := self._partitions.pop(key, None)) is not None:
                partition.released = True
                released.append(partition)
        return released


def describe(keys: Iterable[PartitionKey]) -> str:
    """Partitions as a log line names them: `topic[0], topic[3]`."""
    return ", ".join(f"{topic}[{partition}]" for topic, partition in keys) or "nothing"
