"""The registry circuit: ids are resolved off the loop, one lookup at a time, an outage waited out with backoff
(never a dead letter, never an exit), reported while it lasts and once it ends."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from pipeline.contract.registry import SchemaLookups, SchemaRegistryUnavailable


class SteppingStop(threading.Event):
    """A stop whose waits return at once and move the clock instead: no test waits an outage out for real."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.now += timeout or 0.0
        return self.is_set()


class Registry:
    """Answers after `failures` failed attempts; records what was asked."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked: list[int] = []

    def resolve(self, schema_id: int) -> None:
        self.asked.append(schema_id)
        if self.failures:
            self.failures -= 1
            raise SchemaRegistryUnavailable(f"schema registry is unreachable resolving id {schema_id}: refused")


def _resolved(lookups: SchemaLookups, count: int) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        got += lookups.resolved()
        time.sleep(0.005)
    return got


def test_an_outage_is_waited_out_with_backoff_then_reported_over(caplog: pytest.LogCaptureFixture) -> None:
    stop, registry = SteppingStop(), Registry(failures=8)
    lookups = SchemaLookups(registry.resolve, "http://registry:8081", stop=stop, clock=lambda: stop.now)
    with caplog.at_level(logging.INFO, "pipeline.contract.registry"):
        lookups.want(7)
        assert _resolved(lookups, 1) == [7]
    assert stop.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0], "backoff doubling up to 30 s"
    assert registry.asked == [7] * 9
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SCHEMA_REGISTRY_URL" in errors[0].getMessage(), "said once, with what to check"
    assert any("answers again after 121s" in r.getMessage() for r in caplog.records)
    assert lookups.problem() == "" and lookups.failing_for() == 0.0
    stop.set()


def test_while_it_fails_the_problem_names_the_registry_and_how_long() -> None:
    stop, registry = SteppingStop(), Registry(failures=10**9)
    lookups = SchemaLookups(registry.resolve, "http://registry:8081", stop=stop, clock=lambda: stop.now)
    lookups.want(7)
    deadline = time.monotonic() + 10
    while stop.now < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    assert lookups.problem().startswith("schema registry at http://registry:8081: no answer for ")
    assert "resolving id 7" in lookups.problem()
    assert lookups.failing_for() >= 60
    assert lookups.resolved() == []


def test_an_id_is_asked_once_however_many_messages_need_it() -> None:
    stop, registry = SteppingStop(), Registry(failures=0)
    lookups = SchemaLookups(registry.resolve, "http://registry:8081", stop=stop, clock=lambda: stop.now)
    for schema_id in (3, 3, 4, 3):
        lookups.want(schema_id)
    assert sorted(_resolved(lookups, 2)) == [3, 4]
    assert registry.asked == [3, 4]
    lookups.want(3)  # answered already: the decoder has it cached, but asking again is harmless
    assert _resolved(lookups, 1) == [3]
    stop.set()


def test_shutdown_ends_the_wait() -> None:
    stop, registry = SteppingStop(), Registry(failures=10**9)
    lookups = SchemaLookups(registry.resolve, "http://registry:8081", stop=stop, clock=lambda: stop.now)
    before = set(threading.enumerate())
    lookups.want(7)
    (thread,) = set(threading.enumerate()) - before
    deadline = time.monotonic() + 10
    while len(registry.asked) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "the lookup thread ends with the stop, mid-outage"
    assert lookups.resolved() == []
