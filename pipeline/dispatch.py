"""Parallel delivery that keeps each key's tasks in submission order.

Different users' events go out concurrently on a bounded pool of worker threads; the events of one
user run one after another, in the order they were read. A key of None means "no ordering needed".
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Task = Callable[[], None]


class OrderedExecutor:
    def __init__(self, workers: int, name: str = "deliver") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, deque[Task]] = {}  # a key is present while one of its tasks runs

    def submit(self, key: Hashable | None, task: Task) -> None:
        if key is None:
            self._pool.submit(self._run_one, task)
            return
        with self._lock:
            queue = self._waiting.get(key)
            if queue is not None:
                queue.append(task)
                return
            self._waiting[key] = deque()
        self._pool.submit(self._run_chain, key, task)

    def _run_chain(self, key: Hashable, task: Task) -> None:
        """Run this key's tasks back to back on one worker until its queue is empty."""
        while True:
            self._run_one(task)
            with self._lock:
                queue = self._waiting[key]
                if not queue:
                    del self._waiting[key]
                    return
                task = queue.popleft()

    @staticmethod
    def _run_one(task: Task) -> None:
        try:
            task()
        except Exception:  # a task reports its own outcome; reaching here is a bug, so keep the worker alive
            log.exception("delivery task raised")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
