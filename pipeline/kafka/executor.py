"""Parallel delivery that keeps each key's tasks in submission order.

Different users' events go out concurrently on a set of worker threads; the events of one user
run one after another, in the order they were read. A key of None means "no ordering needed".

Workers always take the oldest ready task (by submission order). The oldest unfinished message of a
partition caps its commit position, so serving oldest-first keeps commits close behind deliveries
and keeps what a crash repeats small; a plain FIFO pool lets one busy user's backlog hold it back.

A task that is not finished returns a `Wait`: it runs again after that many seconds, or as soon as one
of its wake events is set (a stop, delivery resuming). Its key stays held meanwhile, so the key's later
tasks keep waiting behind it, but no thread waits for it: a timer thread puts it back among the ready
tasks in its original place, and the workers serve other keys meanwhile. A task running for longer than
`stall_after` (a request Wigzo leaves hanging) no longer takes a worker's place: while ready work waits,
a spare thread starts for each such task, up to `workers` spares, and spares retire when not needed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from queue import SimpleQueue
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import Message

from pipeline.model import (
    Aborted,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    Rejection,
    Wait,
    WigzoRequest,
)
from pipeline.telemetry import metrics
from pipeline.telemetry.logs import message_fields

log = logging.getLogger(__name__)

WAKE_POLL = 0.05  # how often wake events are checked: a threading.Event cannot call anyone back


Task = Callable[[], object]  # returns a Wait when not finished


@dataclass(eq=False, slots=True)
class _Delayed:
    sequence: int
    key: Hashable | None
    task: Task
    wake: tuple[threading.Event, ...]
    fired: bool = False  # back among the ready tasks (on time or woken); its timer entry is stale


class OrderedExecutor:
    def __init__(self, workers: int, stall_after: float, name: str = "send") -> None:
        """`stall_after` is the Wigzo client's (DeliveryPolicy.stall_after): a request stalled that long stops
        counting against the client's limit, and its thread stops counting as a worker here."""
        self._name = name
        self._workers = workers
        self._stall_after = stall_after
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._timer_due = threading.Condition(self._lock)
        self._sequence = itertools.count()
        self._tickets = itertools.count()  # tie-breaks timer entries due at the same moment
        self._spare_names = itertools.count()
        self._ready: list[tuple[int, Hashable | None, Task]] = []  # heap by submission order
        self._waiting: dict[Hashable, deque[tuple[int, Task]]] = {}  # a key is present while it has a task out
        self._delayed: list[tuple[float, int, _Delayed]] = []  # heap by due time
        self._watched: dict[threading.Event, set[_Delayed]] = {}  # delayed tasks by the events that wake them
        self._running: dict[threading.Thread, float] = {}  # busy threads: when their task started
        self._threads: set[threading.Thread] = set()
        self._idle_threads = 0
        self._timer_unscheduled = False  # the timer waits to be told: nothing is delayed, watched or running
        self._unfinished = 0
        self._closing = False
        with self._lock:
            for n in range(workers):
                self._start_thread(f"{name}-{n}")
        self._timer = threading.Thread(target=self._keep_time, name=f"{name}-timer", daemon=True)
        self._timer.start()

    def submit(self, key: Hashable | None, task: Task) -> None:
        with self._lock:
            sequence = next(self._sequence)
            self._unfinished += 1
            if key is not None:
                queue = self._waiting.get(key)
                if queue is not None:
                    queue.append((sequence, task))
                    return
                self._waiting[key] = deque()
            heapq.heappush(self._ready, (sequence, key, task))
            self._work_ready.notify()

    def resize(self, workers: int) -> None:
        """WIGZO_MAX_IN_FLIGHT changed (a reload): start the threads a larger pool needs now; a smaller one
        lets its extra threads retire as spares do, once they are idle."""
        with self._lock:
            self._workers = workers
            for n in range(len(self._threads), workers):
                self._start_thread(f"{self._name}-{n}")
            self._work_ready.notify_all()

    def _start_thread(self, name: str) -> None:
        thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._threads.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        ran: tuple[int, Hashable | None, Task, Wait | None] | None = None
        task: Task | None = None
        while True:
            with self._lock:
                if ran is not None:
                    del self._running[me]
                    self._settle(*ran)
                    # an idle thread must not keep its last task alive: with hundreds of workers, each pinning
                    # an event (its message, decoded form and request body) was what held a large-message
                    # backlog in memory, not the pending window
                    ran = task = None
                while True:
                    spares = len(self._threads) - self._workers
                    if self._closing or (spares > 0 and (
                            not self._ready or spares > self._count_stalled(time.monotonic()))):
                        self._threads.discard(me)
                        return
                    if self._ready:
                        break
                    self._idle_threads += 1
                    self._work_ready.wait()
                    self._idle_threads -= 1
                sequence, key, task = heapq.heappop(self._ready)
                self._running[me] = time.monotonic()
                if self._timer_unscheduled:  # so it looks for a stall in time
                    self._timer_unscheduled = False
                    self._timer_due.notify()
            later = None
            try:
                if isinstance(answer := task(), Wait):  # anything else (a lambda's value) means finished
                    later = answer
            except Exception:  # a task reports its own outcome; reaching here is a bug, so keep the worker alive
                log.exception("delivery task raised")
            ran = (sequence, key, task, later)

    def _settle(self, sequence: int, key: Hashable | None, task: Task, later: Wait | None) -> None:
        """After a run (lock held): release the key, or park the task until it is due. This worker takes the
        oldest ready task itself next, so no other thread needs waking (a handoff per task costs more than
        the task's bookkeeping)."""
        if later is None:
            if key is not None:
                self._release_key(key)
            else:
                self._task_done()
        elif later.seconds <= 0 or any(event.is_set() for event in later.wake):
            heapq.heappush(self._ready, (sequence, key, task))
        else:
            entry = _Delayed(sequence, key, task, later.wake)
            heapq.heappush(self._delayed, (time.monotonic() + later.seconds, next(self._tickets), entry))
            for event in later.wake:
                self._watched.setdefault(event, set()).add(entry)
            self._timer_due.notify()

    def _release_key(self, key: Hashable) -> None:
        """Make the key's next task ready."""
        queue = self._waiting[key]
        if queue:
            sequence, following = queue.popleft()
            heapq.heappush(self._ready, (sequence, key, following))
        else:
            del self._waiting[key]
        self._task_done()

    def _task_done(self) -> None:
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.notify_all()

    # ---- the timer thread: delayed tasks back when due or woken, spares for stalled tasks -----------

    def _keep_time(self) -> None:
        with self._lock:
            while not self._closing:
                now = time.monotonic()
                if fired := self._fire(now):
                    self._work_ready.notify(fired)
                self._add_spares(now)
                tick = self._next_tick(now)
                self._timer_unscheduled = tick is None
                self._timer_due.wait(tick)

    def _fire(self, now: float) -> int:
        fired = 0
        while self._delayed and self._delayed[0][0] <= now:
            fired += self._make_ready(heapq.heappop(self._delayed)[2])
        for event in [event for event in self._watched if event.is_set()]:
            for entry in list(self._watched.get(event, ())):
                fired += self._make_ready(entry)
        return fired

    def _make_ready(self, entry: _Delayed) -> int:
        if entry.fired:
            return 0
        entry.fired = True
        for event in entry.wake:
            watchers = self._watched[event]
            watchers.discard(entry)
            if not watchers:
                del self._watched[event]
        heapq.heappush(self._ready, (entry.sequence, entry.key, entry.task))
        return 1

    def _add_spares(self, now: float) -> None:
        """While work waits and no thread is free, give each stalled task's thread a stand-in."""
        if not self._ready or self._idle_threads:
            return
        wanted = min(self._count_stalled(now), self._workers) - (len(self._threads) - self._workers)
        for _ in range(wanted):
            self._start_thread(f"{self._name}-spare-{next(self._spare_names)}")

    def _count_stalled(self, now: float) -> int:
        return sum(1 for started in self._running.values() if now - started >= self._stall_after)

    def _next_tick(self, now: float) -> float | None:
        """Seconds until the timer has something to do; None: nothing until notified."""
        while self._delayed and self._delayed[0][2].fired:
            heapq.heappop(self._delayed)
        ticks = [self._delayed[0][0] - now] if self._delayed else []
        if self._watched:
            ticks.append(WAKE_POLL)
        if self._running:
            until_stall = min(self._running.values()) + self._stall_after - now
            ticks.append(until_stall if until_stall > 0 else self._stall_after / 4)
        return min(ticks) if ticks else None

    def shutdown(self) -> None:
        """Run every submitted task to its end (a delayed one when due or woken), then stop the threads."""
        with self._lock:
            self._idle.wait_for(lambda: not self._unfinished)
            self._closing = True
            self._work_ready.notify_all()
            self._timer_due.notify()
            threads = [*self._threads, self._timer]
        for thread in threads:
            thread.join()


# ---- the worker-thread step of one event's delivery ---------------------------------------------------------

Attempts = TypeVar("Attempts")
Ticket = TypeVar("Ticket")


class Sender(Protocol[Attempts]):
    """What sends a request, one try at a time (pipeline.wigzo.client.WigzoClient)."""

    def start(self, request: WigzoRequest) -> Attempts: ...
    def attempt(self, attempts: Attempts, stop: threading.Event) -> DeliveryResult | Wait: ...


@dataclass(eq=False)
class EventSend(Generic[Ticket]):
    """One event's requests, sent in order on worker threads, one try per call: the first request that does not
    succeed decides. A wait (backoff, Retry-After, delivery paused) goes back to the executor as a `Wait` that
    also wakes on `stop`, so no thread sleeps through it. The result goes to `results` with the event's ticket,
    for the polling thread; `stop` set means Aborted (the partition was released)."""

    ticket: Ticket
    coordinates: tuple[str, int, int]  # the message's topic, partition, offset: for a crash's log line
    requests: tuple[WigzoRequest, ...]
    timestamp: object  # the event's own ISO-8601 timestamp, for the event-to-delivery latency
    sender: Sender
    stop: threading.Event
    results: SimpleQueue[tuple[Ticket, DeliveryResult]]
    wall_clock: Callable[[], float]
    sent: int = 0  # requests delivered so far
    current: object | None = field(default=None)  # the sender's attempts at requests[sent], between calls

    def __call__(self) -> Wait | None:
        result: DeliveryResult = Aborted(attempts=0)
        try:
            while self.sent < len(self.requests) and (self.current is not None or not self.stop.is_set()):
                if self.current is None:
                    self.current = self.sender.start(self.requests[self.sent])
                answer = self.sender.attempt(self.current, self.stop)
                if isinstance(answer, Wait):
                    return Wait(answer.seconds, (self.stop, *answer.wake))
                self.current, result = None, answer
                if not isinstance(result, Delivered):
                    break
                self.sent += 1
        except Exception as exc:  # a bug in delivery must not lose the event: dead-letter it with the cause
            log.exception("delivery raised", extra=message_fields(*self.coordinates))
            now = self.wall_clock()
            result = DeliveryFailed(Rejection("delivery", "DeliveryCrashed", f"{type(exc).__name__}: {exc}"),
                                    attempts=1, first_failure=now, last_failure=now, history=())
        if isinstance(result, Delivered) and (event_time := _epoch_seconds(self.timestamp)) is not None:
            metrics.EVENT_TO_DELIVERY.observe(max(0.0, self.wall_clock() - event_time))
        self.results.put((self.ticket, result))
        return None


def ordering_key(mode: str, record: Message, event: dict[str, Any]) -> Hashable | None:
    """What must stay in order (DELIVERY_ORDERING): one user's events (the Kafka key, else the user), one
    partition's, or nothing."""
    if mode == "key":
        return record.key() or event.get("userId") or event.get("anonymousId")
    if mode == "partition":
        return (record.topic(), record.partition())
    return None


def _epoch_seconds(timestamp: object) -> float | None:
    """A validated event's ISO-8601 timestamp as epoch seconds (None when absent)."""
    if not isinstance(timestamp, str):
        return None
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None
