"""Same-key tasks run in order and one at a time; different keys overlap."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from pipeline.kafka.executor import OrderedExecutor


def test_same_key_keeps_order_and_different_keys_run_in_parallel() -> None:
    executor = OrderedExecutor(workers=8)
    seen: dict[str, list[int]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    lock = threading.Lock()
    peak = [0, 0]  # current, max concurrent tasks overall

    def task(key: str, n: int) -> None:
        with lock:
            running[key] += 1
            if running[key] > 1:
                overlaps.append(key)
            peak[0] += 1
            peak[1] = max(peak[1], peak[0])
        time.sleep(0.002)
        with lock:
            seen[key].append(n)
            running[key] -= 1
            peak[0] -= 1

    for n in range(40):
        for key in ("a", "b", "c", "d"):
            executor.submit(key, lambda key=key, n=n: task(key, n))
    executor.shutdown()
    assert overlaps == []
    assert all(seen[key] == list(range(40)) for key in "abcd")
    assert peak[1] > 1, "different keys must run concurrently"


def test_unkeyed_tasks_and_a_raising_task_do_not_stall_the_chain() -> None:
    executor = OrderedExecutor(workers=2)
    done: list[int] = []

    def boom() -> None:
        raise RuntimeError("bug")

    executor.submit("k", boom)
    executor.submit("k", lambda: done.append(1))
    executor.submit(None, lambda: done.append(2))
    executor.shutdown()
    assert sorted(done) == [1, 2]


def test_workers_take_the_oldest_ready_task_first() -> None:
    """The oldest unfinished message caps the commit position, so it must not wait behind newer work."""
    executor = OrderedExecutor(workers=1)
    release = threading.Event()
    order: list[str] = []
    executor.submit("a", lambda: (release.wait(5), order.append("a0")))
    for key, label in (("b", "b1"), ("c", "c2"), ("a", "a3"), ("d", "d4"), ("b", "b5")):
        executor.submit(key, lambda label=label: order.append(label))
    release.set()
    executor.shutdown()
    assert order == ["a0", "b1", "c2", "a3", "d4", "b5"]
