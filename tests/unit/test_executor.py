"""Same-key tasks run in order and one at a time; different keys overlap; a task that asks to run again later
keeps its key but no thread; a stalled task does not keep other keys waiting."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from pipeline.config import Settings
from pipeline.kafka.executor import OrderedExecutor
from pipeline.model import Wait
from pipeline.wigzo.policy import DeliveryPolicy

STALL_AFTER = DeliveryPolicy.from_settings(Settings()).stall_after


def test_same_key_keeps_order_and_different_keys_run_in_parallel() -> None:
    executor = OrderedExecutor(workers=8, stall_after=STALL_AFTER)
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
    executor = OrderedExecutor(workers=2, stall_after=STALL_AFTER)
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
    executor = OrderedExecutor(workers=1, stall_after=STALL_AFTER)
    release = threading.Event()
    order: list[str] = []
    executor.submit("a", lambda: (release.wait(5), order.append("a0")))
    for key, label in (("b", "b1"), ("c", "c2"), ("a", "a3"), ("d", "d4"), ("b", "b5")):
        executor.submit(key, lambda label=label: order.append(label))
    release.set()
    executor.shutdown()
    assert order == ["a0", "b1", "c2", "a3", "d4", "b5"]


class Resumable:
    """A task that asks to run again after `delays` (one per run) before finishing; it logs every run."""

    def __init__(self, name: str, log: list[tuple[str, float]], *delays: float,
                 wake: tuple[threading.Event, ...] = ()) -> None:
        self.name, self.log, self.delays, self.wake = name, log, list(delays), wake

    def __call__(self) -> Wait | None:
        self.log.append((self.name, time.monotonic()))
        return Wait(self.delays.pop(0), self.wake) if self.delays else None


def test_a_delayed_task_holds_its_key_but_no_thread() -> None:
    """With one worker, a task waiting 1 s to run again lets other keys run meanwhile; its own key waits."""
    executor = OrderedExecutor(workers=1, stall_after=STALL_AFTER)
    runs: list[tuple[str, float]] = []
    executor.submit("a", Resumable("a0", runs, 1.0))
    executor.submit("a", Resumable("a1", runs))
    executor.submit("b", Resumable("b0", runs))
    executor.shutdown()
    assert [name for name, _ in runs] == ["a0", "b0", "a0", "a1"]
    (_, first), (_, again) = runs[0], runs[2]
    assert again - first >= 1.0  # never before it asked


def test_a_delayed_task_comes_back_in_its_original_place() -> None:
    """Due again, the oldest message goes before newer work: it caps its partition's commit position."""
    executor = OrderedExecutor(workers=1, stall_after=STALL_AFTER)
    runs: list[tuple[str, float]] = []
    executor.submit("old", Resumable("old", runs, 0.3))
    for n in range(20):
        executor.submit(f"new{n}", lambda n=n: (time.sleep(0.05), runs.append((f"new{n}", time.monotonic()))))
    executor.shutdown()
    names = [name for name, _ in runs]
    assert names.count("old") == 2 and names.index("old", 1) < len(names) - 1  # not behind all the newer work


def test_a_wake_event_brings_a_delayed_task_back_at_once() -> None:
    """A stop must not wait out a 300 s Retry-After: the task runs again (and, seeing the stop, finishes)."""
    executor = OrderedExecutor(workers=2, stall_after=STALL_AFTER)
    runs: list[tuple[str, float]] = []
    stop = threading.Event()
    executor.submit("a", Resumable("a0", runs, 300.0, wake=(stop,)))
    executor.submit("a", Resumable("a1", runs))
    deadline = time.monotonic() + 5
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    executor.shutdown()  # returns only once every task finished
    assert [name for name, _ in runs] == ["a0", "a0", "a1"]
    assert runs[1][1] - runs[0][1] < 300.0


def test_a_task_can_ask_to_run_again_at_once() -> None:
    executor = OrderedExecutor(workers=1, stall_after=STALL_AFTER)
    runs: list[tuple[str, float]] = []
    executor.submit("a", Resumable("a0", runs, 0.0, 0.0))
    executor.shutdown()
    assert [name for name, _ in runs] == ["a0", "a0", "a0"]


def test_a_stalled_task_gets_a_stand_in_so_other_keys_proceed() -> None:
    """With one worker, a task stuck for longer than stall_after (a request Wigzo leaves hanging) stops
    counting as the worker: a spare thread runs the other keys, and retires once it is not needed."""
    executor = OrderedExecutor(workers=1, stall_after=0.2)
    stuck, other_ran = threading.Event(), threading.Event()
    executor.submit("a", lambda: stuck.wait(5))
    executor.submit("a", other_ran.set)  # same key: must wait for the stuck task
    executor.submit("b", lambda: other_ran.wait(0))
    b_ran = threading.Event()
    executor.submit("c", b_ran.set)
    assert b_ran.wait(5), "another key ran while the first task was stuck"
    assert not other_ran.is_set(), "the stuck task's key still waits"
    stuck.set()
    assert other_ran.wait(5)
    deadline = time.monotonic() + 5
    while len(executor._threads) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(executor._threads) == 1, "the spare retired"
    executor.shutdown()
