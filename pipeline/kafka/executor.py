"""Parallel delivery that keeps each key's tasks in submission order.

Different users' events go out concurrently on a fixed set of worker threads; the events of one user
run one after another, in the order they were read. A key of None means "no ordering needed".

Workers always take the oldest ready task (by submission order). The oldest unfinished message of a
partition caps its commit position, so serving oldest-first keeps commits close behind deliveries
and keeps what a crash repeats small; a plain FIFO pool lets one busy user's backlog hold it back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Task = Callable[[], None]
_STOP = object()


class OrderedExecutor:
    def __init__(self, workers: int, name: str = "deliver") -> None:
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._sequence = itertools.count()
        self._ready: list[tuple[int, Hashable | None, Task | object]] = []  # heap by submission order
        self._waiting: dict[Hashable, deque[tuple[int, Task]]] = {}  # a key is present while it has a task out
        self._unfinished = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True) for n in range(workers)]
        for thread in self._threads:
            thread.start()

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

    def _work(self) -> None:
        finished: Hashable | None = None
        while True:
            with self._lock:
                if finished is not None:
                    self._release_key(finished)
                while not self._ready:
                    self._work_ready.wait()
                _, key, task = heapq.heappop(self._ready)
            if task is _STOP:
                return
            try:
                task()  # type: ignore[operator]
            except Exception:  # a task reports its own outcome; reaching here is a bug, so keep the worker alive
                log.exception("delivery task raised")
            finished = key
            if key is None:
                with self._lock:
                    self._task_done()

    def _release_key(self, key: Hashable) -> None:
        """Make the key's next task ready; this worker picks up the oldest ready task itself, so no
        other thread needs waking (a thread handoff per task costs more than the task's bookkeeping)."""
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

    def shutdown(self) -> None:
        """Run every submitted task, then stop the workers."""
        with self._lock:
            self._idle.wait_for(lambda: not self._unfinished)
            for _ in self._threads:
                heapq.heappush(self._ready, (next(self._sequence), None, _STOP))
            self._work_ready.notify_all()
        for thread in self._threads:
            thread.join()
