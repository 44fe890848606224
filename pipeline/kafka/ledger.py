"""The partition ledger: what this member holds of each assigned partition, and which offset is safe to commit.

Messages finish out of order (different users are delivered in parallel), but a commit says "all before this
offset is done". So a partition commits only up to its lowest unfinished offset, never past it. The ledger
also knows which partitions are paused and why, what was committed (or is being committed), which events a
mapping streak holds back (pipeline.kafka.mapping_streak) and which wait for the schema registry. Pure
bookkeeping, used from the polling thread only, except `Partition.stop` and `in_executor`'s reads by workers.

Flow control has two bounds. Each partition has a window of unfinished messages, in which one user's events
count only up to a share of it: a user with a long queue (delivered one at a time, in order) cannot stop the
partition from being read for everyone else. And the whole member has a window in bytes (its share of
MEMORY_BUDGET_MB) over every message read and not committable yet, which bounds what such a queue, or a
backlog of large messages, can hold.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Message

from pipeline.kafka.mapping_streak import MappingStreak
from pipeline.model import DeadLetter
from pipeline.telemetry import metrics

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]

# What a message read costs in memory beyond its bytes, counted twice (the consumed value, and the decoded event
# or the dead letter's copy while it is unfinished): the message, ledger and task objects around it.
MESSAGE_OVERHEAD = 1024
OFFSET_COST = 100  # a finished offset waiting behind an unfinished one: an int in a deque and a set
KEY_SHARE = 10  # one user's events count for at most 1/KEY_SHARE of a partition's window


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
    committing: int | None = None  # a position sent in an asynchronous commit not answered yet
    released: bool = False
    bytes: int = 0  # what the unfinished messages hold in memory (estimated)
    queued: Counter[Hashable] = field(default_factory=Counter)  # events in the executor, by ordering key
    over_share: int = 0  # of those, the events past their key's share of the window
    hot_key: str = ""  # the hashed key said to hold most of this partition, while it does

    def read(self, offset: int, record: Message) -> Pending:
        self.offsets.read(offset)
        size = 2 * (len(record.value() or b"") + len(record.key() or b"")) + MESSAGE_OVERHEAD
        self.bytes += size
        return Pending(self, offset, record, size)

    def finish(self, pending: Pending) -> None:
        if not self.released:
            self.offsets.finish(pending.offset)
            self.bytes -= pending.size

    def sent(self, pending: Pending, key: Hashable | None, share: int) -> None:
        """The event went to the executor, queued behind its key's earlier events."""
        self.in_executor += 1
        pending.key = key
        if key is not None:
            self.queued[key] += 1
            if self.queued[key] > share:
                self.over_share += 1

    def returned(self, pending: Pending, share: int) -> None:
        """The executor gave the event's result back."""
        self.in_executor -= 1
        if (key := pending.key) is not None:
            if self.queued[key] > share:
                self.over_share -= 1
            self.queued[key] -= 1
            if not self.queued[key]:
                del self.queued[key]

    @property
    def counted(self) -> int:
        """Unfinished messages as the window counts them: each key's up to its share."""
        return self.offsets.unfinished - self.over_share

    @property
    def memory(self) -> int:
        return self.bytes + OFFSET_COST * self.offsets.outstanding

    def longest_queue(self) -> tuple[Hashable | None, int]:
        if not self.queued:
            return None, 0
        return max(self.queued.items(), key=lambda item: item[1])


@dataclass(slots=True)
class Pending:
    """A message read and not finished: where it was read (its own offset, which a redrive reader's record does
    not carry), the record to process, its estimated size in memory, and its ordering key once sent."""

    partition: Partition
    offset: int
    record: Message
    size: int = 0
    key: Hashable | None = None


Held = tuple[Pending, DeadLetter]  # an event a mapping streak holds, with the letter it gets if the streak ends


class PartitionLedger:
    def __init__(self, window: int, window_bytes: int, streak_threshold: int) -> None:
        """`window`: unfinished messages per partition before it pauses; `window_bytes`: memory of the messages
        read and not committable yet, over all partitions, before all pause. Each resumes below half of it."""
        self._partitions: dict[PartitionKey, Partition] = {}
        self._window = window
        self._window_bytes = window_bytes
        self.key_share = max(1, window // KEY_SHARE)
        self._over_bytes = False
        self._awaiting_schema: dict[int, list[Pending]] = {}
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

    def memory(self) -> int:
        """Estimated bytes held by messages read and not committable yet."""
        return sum(partition.memory for partition in self._partitions.values())

    def repause(self, accepting: Callable[[PartitionKey], bool], exhausted: Callable[[PartitionKey], bool],
                ) -> tuple[list[PartitionKey], list[PartitionKey]]:
        """Which partitions to pause and which to resume now: those whose destination is not accepting work
        (its Wigzo is down, or rejects its token), all while the member's window in bytes is full (until below
        half of it), those with nothing more to read, and those whose own window is full (until below half of
        it)."""
        memory = self.memory()
        self._over_bytes = memory >= self._window_bytes or (self._over_bytes and memory > self._window_bytes // 2)
        to_pause, to_resume = [], []
        for key, partition in self._partitions.items():
            counted = partition.counted
            wanted = (not accepting(key) or self._over_bytes or exhausted(key) or counted >= self._window
                      or (partition.paused and counted > self._window // 2))
            if wanted != partition.paused:
                (to_pause if wanted else to_resume).append(key)
                partition.paused = wanted
        return to_pause, to_resume

    def longest_queue(self) -> int:
        """The most events one key has waiting in any partition; says so once when one key holds most of a
        partition (past its share), by the key's hash, never the key (a user id)."""
        longest = 0
        for partition in self._partitions.values():
            key, queued = partition.longest_queue()
            longest = max(longest, queued)
            if queued > self.key_share and 2 * queued > partition.offsets.unfinished:
                if not partition.hot_key:
                    partition.hot_key = _hashed(key)
                    log.warning("one key (sha256 %s) holds %d of the %d unfinished events of %s: its events go out "
                                "one at a time, in order, while the partition keeps being read for other keys; "
                                "commits wait for its oldest event", partition.hot_key, queued,
                                partition.offsets.unfinished, describe([partition.key]))
            elif partition.hot_key and queued <= self.key_share:
                log.info("key (sha256 %s) of %s is back within its share of the window", partition.hot_key,
                         describe([partition.key]))
                partition.hot_key = ""
        return longest

    # ---- events that wait for the schema registry -------------------------------------------------

    def await_schema(self, schema_id: int, pending: Pending) -> None:
        self._awaiting_schema.setdefault(schema_id, []).append(pending)

    def schema_arrived(self, schema_id: int) -> list[Pending]:
        """The events that waited for this schema id, in read order, except those of released partitions."""
        return [p for p in self._awaiting_schema.pop(schema_id, []) if not p.partition.released]

    def awaiting_schema(self) -> int:
        return sum(len(waiting) for waiting in self._awaiting_schema.values())

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

    def let_go_awaiting_schema(self, keys: Iterable[PartitionKey]) -> int:
        """Forget the events of these partitions that wait for the registry (uncommitted, read again): how many."""
        released, dropped = set(keys), 0
        for schema_id, waiting in list(self._awaiting_schema.items()):
            kept = [p for p in waiting if p.partition.key not in released]
            dropped += len(waiting) - len(kept)
            self._awaiting_schema[schema_id] = kept
        return dropped

    def all_paused(self) -> bool:
        return all(partition.paused for partition in self._partitions.values())

    def due(self, keys: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """Commit positions that moved since the last commit (and are not being committed), for the given
        partitions."""
        due = {}
        for key in keys:
            partition = self._partitions.get(key)
            position = None if partition is None else partition.offsets.commit_position
            if (partition is not None and position is not None
                    and position not in (partition.committed, partition.committing)):
                due[key] = position
        return due

    def committing(self, positions: dict[PartitionKey, int]) -> None:
        """These positions went out in an asynchronous commit; `commit_answered` says how it went."""
        for key, position in positions.items():
            if (partition := self._partitions.get(key)) is not None:
                partition.committing = position

    def commit_answered(self, key: PartitionKey, position: int, ok: bool) -> None:
        """The broker's answer to a commit of one position: committed, or due again."""
        if (partition := self._partitions.get(key)) is None:
            return
        if ok:
            partition.committed = position
        if partition.committing == position:
            partition.committing = None

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


def _hashed(key: Hashable | None) -> str:
    text = key if isinstance(key, bytes) else str(key).encode()
    return hashlib.sha256(text).hexdigest()[:12]


def describe(keys: Iterable[PartitionKey]) -> str:
    """Partitions as a log line names them: `topic[0], topic[3]`."""
    return ", ".join(f"{topic}[{partition}]" for topic, partition in keys) or "nothing"
