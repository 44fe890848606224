"""WigzoClient against the sandbox over real HTTP: every row of the classifier, Retry-After, the circuit,
a 401 phase, bounded timeouts, pooling, an outage many retry budgets long that dead-letters nothing, a broken
configuration held instead of dead-lettered and resumed by itself, and requests left hanging that do not stop
delivery."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.model import (
    Aborted,
    Delivered,
    DeliveryFailed,
    DeliveryResult,
    Secret,
    WigzoRequest,
)
from pipeline.wigzo.client import WigzoClient
from pipeline.wigzo.policy import DeliveryPolicy
from tests.conftest import wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox

pytestmark = pytest.mark.integration

FAST = DeliveryPolicy(retry_statuses=Settings().retry_statuses, backoff_base=0.05, backoff_cap=0.2, probe_base=0.1,
                      probe_cap=0.5, auth_probe_base=0.2, auth_probe_cap=0.5, gate_poll=0.02)
HISTORY_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+$")


def settings(url: str, **overrides: Any) -> Settings:
    base = Settings(wigzo_base_url=url, wigzo_org_token=Secret(SANDBOX_ORG_TOKEN), max_in_flight=16,
                    connect_timeout=2.0, read_timeout=5.0, max_attempts=5, retry_budget_seconds=30.0)
    return replace(base, **overrides)


@pytest.fixture
def make_client(sandbox: Sandbox) -> Iterator[Any]:
    clients: list[WigzoClient] = []

    def make(policy: DeliveryPolicy = FAST, url: str | None = None, **overrides: Any) -> WigzoClient:
        client = WigzoClient(settings(url or sandbox.url, **overrides), policy=policy)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def identify(key: str, user: str = "u1", **body: Any) -> WigzoRequest:
    return WigzoRequest("POST", "/rest/v1/learn/identify", (("org_token", SANDBOX_ORG_TOKEN),),
                        {"userId": user, "email": f"{user}@example.com", **body}, (("Idempotency-Key", key),))


def deliver_all(client: WigzoClient, requests: Sequence[WigzoRequest], workers: int,
                stop: threading.Event | None = None) -> list[DeliveryResult]:
    stop = stop or threading.Event()
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda r: client.deliver(r, stop), requests))


def kept_probing(caplog: pytest.LogCaptureFixture, seconds: float) -> Callable[[], bool]:
    """True once an attempt failed `seconds` after the client paused delivery (the ERROR line saying so): it had
    that long to flood Wigzo or the dead-letter topic, and probed instead."""

    def probed() -> bool:
        records = list(caplog.records)
        paused = next((r.created for r in records if r.levelno == logging.ERROR), None)
        return paused is not None and any(
            r.created >= paused + seconds and r.getMessage().startswith("attempt ") and " failed: " in r.getMessage()
            for r in records)

    return probed


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="pipeline.wigzo.client")
    yield
    assert SANDBOX_ORG_TOKEN not in caplog.text


def test_a_delivered_request_carries_its_idempotency_key_and_user_agent(sandbox: Sandbox, make_client: Any) -> None:
    client = make_client()
    assert client.deliver(identify("msg-1"), threading.Event()) == Delivered(200, 1)
    [record] = sandbox.control.received()
    assert record["idempotency_key"] == "msg-1"
    assert record["user_agent"].startswith("segment-wigzo/")
    assert client.state == "healthy" and client.accepting_work()


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_until_delivered(sandbox: Sandbox, make_client: Any, status: int) -> None:
    sandbox.control.set_faults(fail_first_attempts=2, fail_with=str(status))
    assert make_client().deliver(identify("k"), threading.Event()) == Delivered(200, 3)
    assert [a["outcome"] for a in sandbox.control.attempts()] == [status, status, 200]
    assert sandbox.control.duplicates() == {}


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422, 418])
def test_other_4xx_are_permanent_for_the_event(sandbox: Sandbox, make_client: Any, status: int) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with=str(status))
    result = make_client().deliver(identify("k"), threading.Event())
    assert isinstance(result, DeliveryFailed)
    assert result.rejection.stage == "delivery"
    assert result.rejection.error_class == f"HttpStatus{status}" and result.rejection.http_status == status
    assert f"injected HTTP {status}" in result.rejection.reason  # a snippet of Wigzo's body
    assert result.attempts == 1 and len(result.history) == 1 and result.history[0].endswith(f" {status}")
    assert HISTORY_LINE.match(result.history[0]) and result.first_failure == result.last_failure
    assert len(sandbox.control.attempts()) == 1  # not retried


def test_a_validation_error_names_the_field_in_the_dead_letter_reason(sandbox: Sandbox, make_client: Any) -> None:
    request = replace(identify("k"), body={"userId": "u1"})
    result = make_client().deliver(request, threading.Event())
    assert isinstance(result, DeliveryFailed)
    assert "email or phone is required" in result.rejection.reason
    assert SANDBOX_ORG_TOKEN not in repr(result)


def test_the_unknown_route_404_is_permanent(sandbox: Sandbox, make_client: Any) -> None:
    request = replace(identify("k"), path="/rest/v1/learn/nope")
    result = make_client().deliver(request, threading.Event())
    assert isinstance(result, DeliveryFailed) and result.rejection.http_status == 404


def test_a_dropped_connection_is_retried(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with="drop")
    assert make_client().deliver(identify("k"), threading.Event()) == Delivered(200, 2)


def test_a_hanging_request_is_cut_by_the_read_timeout_and_retried(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with="hang")
    started = time.monotonic()
    assert make_client(read_timeout=0.3).deliver(identify("k"), threading.Event()) == Delivered(200, 2)
    assert time.monotonic() - started >= 0.3


def test_timeouts_bound_every_attempt_while_wigzo_hangs(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(hang_rate=1.0)
    stop = threading.Event()
    client = make_client(read_timeout=0.2)
    outcome: list[DeliveryResult] = []
    worker = threading.Thread(target=lambda: outcome.append(client.deliver(identify("k"), stop)))
    worker.start()
    # without a read timeout the first attempt would still be hanging, and no third one would come
    wait_for(lambda: len(sandbox.control.attempts()) >= 3, 10, "a third attempt", interval=0.01)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    [result] = outcome
    assert isinstance(result, Aborted)  # nobody else was served: an outage, not the event's fault
    assert result.attempts >= 3 and len(sandbox.control.attempts()) == result.attempts


def test_429_waits_at_least_retry_after_and_slows_the_whole_client(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with="429", retry_after_s=1)
    # a throttling window of one answer: this 429 is systematic, not scattered (those lower nothing)
    client = make_client(policy=replace(FAST, throttle_window=1), max_in_flight=4)
    assert client.deliver(identify("k"), threading.Event()) == Delivered(200, 2)
    first, second = sandbox.control.attempts()
    assert (first["outcome"], second["outcome"]) == (429, 200)
    assert second["received_at"] - first["received_at"] >= 1.0
    assert client.state == "throttled" and client.accepting_work()
    sandbox.control.set_faults(fail_first_attempts=0)
    results = deliver_all(client, [identify(f"r{n}") for n in range(40)], workers=4)
    assert all(isinstance(r, Delivered) for r in results)
    assert client.state == "healthy"  # the concurrency limit grew back with successes


def test_429_never_spends_the_retry_budget(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(fail_first_attempts=4, fail_with="429", retry_after_s=0)
    assert make_client(max_attempts=1).deliver(identify("k"), threading.Event()) == Delivered(200, 5)


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_token_pauses_delivery_and_then_resumes(sandbox: Sandbox, make_client: Any, status: int) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with=str(status))
    result = make_client().deliver(identify("k"), threading.Event())
    assert result == Delivered(200, 2)


def test_a_401_phase_dead_letters_nothing_and_logs_one_error(
        sandbox: Sandbox, make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    sandbox.control.set_faults(unauthorized=True)
    client = make_client(max_attempts=1, retry_budget_seconds=0.1)
    stop = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.deliver, identify(f"k{n}", f"user{n}"), stop) for n in range(20)]
        wait_for(lambda: client.state == "auth_failed", 10, "auth_failed", interval=0.01)
        assert not client.accepting_work()
        wait_for(kept_probing(caplog, 1.0), 10, "slow probes, all rejected, for a second")
        assert not any(f.done() for f in futures)
        assert len(sandbox.control.attempts()) <= 8 + 6  # the first wave, then one probe at a time
        sandbox.control.set_faults(unauthorized=False)
        results = [f.result(timeout=10) for f in futures]
    assert all(isinstance(r, Delivered) for r in results)
    assert sandbox.control.count() == 20
    assert client.state == "healthy"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(
        "the Wigzo token was rejected (HTTP 401): check WIGZO_ORG_TOKEN / WIGZO_API_TOKEN")
    assert any("accepts the token again" in r.getMessage() for r in caplog.records)


def test_the_circuit_opens_during_an_outage_and_closes_when_wigzo_answers(
        sandbox: Sandbox, make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(max_attempts=2, retry_budget_seconds=0.5)
    stop = threading.Event()
    sandbox.control.set_faults(outage_seconds=2.0)
    states: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.deliver, identify(f"k{n}", f"user{n}"), stop) for n in range(40)]
        while not all(f.done() for f in futures):
            states.add(client.state)
            if client.state == "circuit_open":
                assert not client.accepting_work()
            time.sleep(0.01)
    results = [f.result() for f in futures]
    assert "circuit_open" in states
    assert all(isinstance(r, Delivered) for r in results)
    assert sandbox.control.count() == 40 and sandbox.control.duplicates() == {}
    failed = [a for a in sandbox.control.attempts() if a["outcome"] == 503]
    # with the circuit open only probes go out: 40 events retrying every <=0.2 s for 2 s would be ~400+
    assert len(failed) < 60
    assert client.state == "healthy" and client.accepting_work()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Wigzo is failing") for m in messages)
    assert any("circuit closed" in m for m in messages)


def test_an_event_that_keeps_failing_while_others_succeed_is_dead_lettered_with_its_history(
        sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(error_rate=0.5)
    client = make_client(max_attempts=2)
    results = deliver_all(client, [identify(f"k{n}", f"user{n}") for n in range(120)], workers=8)
    failed = [r for r in results if isinstance(r, DeliveryFailed)]
    delivered = [r for r in results if isinstance(r, Delivered)]
    assert failed and delivered and len(failed) + len(delivered) == 120
    for result in failed:
        assert result.rejection.error_class == "RetryBudgetExhausted"
        assert result.rejection.http_status in (500, 503)
        assert result.attempts >= 2 and len(result.history) == result.attempts
        assert all(HISTORY_LINE.match(line) for line in result.history)
        assert result.first_failure < result.last_failure
        assert "injected HTTP 50" in result.rejection.reason
    assert sandbox.control.count() == len(delivered)


def test_stop_interrupts_a_retry_after_wait(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with="429", retry_after_s=30)
    client = make_client()
    stop = threading.Event()
    outcome: list[DeliveryResult] = []
    worker = threading.Thread(target=lambda: outcome.append(client.deliver(identify("k"), stop)))
    worker.start()
    wait_for(lambda: len(sandbox.control.attempts()) == 1, 10, "the first attempt", interval=0.01)
    stop.set()
    worker.join(timeout=5)
    assert outcome == [Aborted(1)]


def test_stop_interrupts_the_wait_for_an_open_circuit(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(outage_seconds=30)
    client = make_client()
    stop = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        futures: list[Future[DeliveryResult]] = [pool.submit(client.deliver, identify(f"k{n}"), stop)
                                                 for n in range(16)]
        wait_for(lambda: client.state == "circuit_open", 10, "circuit_open", interval=0.01)
        stop.set()
        results = [f.result(timeout=5) for f in futures]
    assert all(isinstance(r, Aborted) for r in results)
    assert sandbox.control.count() == 0


def test_the_pool_keeps_one_connection_per_request_in_flight(sandbox: Sandbox, make_client: Any) -> None:
    sandbox.control.set_faults(latency_ms=1000)  # long enough for all 32 threads to start on a busy machine
    client = make_client(max_in_flight=32)
    opened = sandbox.control.stats()["connections_opened"]
    results = deliver_all(client, [identify(f"k{n}") for n in range(32)], workers=32)
    assert all(isinstance(r, Delivered) for r in results)
    assert sandbox.control.stats()["connections_opened"] - opened == 32  # all 32 were in flight at once
    sandbox.control.set_faults(latency_ms=2)
    results = deliver_all(client, [identify(f"m{n}") for n in range(600)], workers=32)
    assert all(isinstance(r, Delivered) for r in results)
    # requests' default pool of 10 would have closed and reopened connections all along
    assert sandbox.control.stats()["connections_opened"] - opened == 32


def test_network_errors_never_leak_the_tokens(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    client = make_client(url=url)
    stop = threading.Event()
    results = []
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(client.deliver, identify(f"k{n}"), stop) for n in range(12)]
        wait_for(lambda: client.state == "circuit_open", 10, "circuit_open", interval=0.01)
        stop.set()
        results = [f.result(timeout=5) for f in futures]
    assert all(isinstance(r, Aborted) for r in results)
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Wigzo is failing"))
    assert "ConnectionError" in warning and "org_token=***" in warning
    # the autouse fixture checks the token never reached the log


OUTAGE_SECONDS = 6.0


@pytest.mark.slow
def test_an_outage_of_many_retry_budgets_dead_letters_nothing_and_delivers_every_event_after(
        sandbox: Sandbox, make_client: Any) -> None:
    """A stream of events before, during and after a real outage of the sandbox.

    The budgets are tiny (2 attempts, 1 s) so that any retry counted during the outage would
    dead-letter events: none may be. The outage lasts six retry budgets and thirty times the longest wait
    between probes (0.2 s), so it is long for the client without being long for the suite.
    """
    policy = replace(FAST, probe_cap=0.2)
    client = make_client(policy=policy, max_in_flight=32, max_attempts=2, retry_budget_seconds=1.0)
    stop = threading.Event()
    states: set[str] = set()
    futures: list[Future[DeliveryResult]] = []
    started = time.monotonic()
    outage_started = 0.0
    with ThreadPoolExecutor(32) as pool:
        n = 0
        while (elapsed := time.monotonic() - started) < OUTAGE_SECONDS + 6.0:  # 3 s healthy, the outage, 3 s after
            if not outage_started and elapsed >= 3.0:
                sandbox.control.set_faults(outage_seconds=OUTAGE_SECONDS)
                outage_started = time.monotonic()
            futures.append(pool.submit(client.deliver, identify(f"k{n}", f"user{n % 50}"), stop))
            n += 1
            states.add(client.state)
            time.sleep(0.1)  # the stream's pace: ten events a second
        results = [f.result(timeout=60) for f in futures]
    assert "circuit_open" in states
    assert all(isinstance(r, Delivered) for r in results), [r for r in results if not isinstance(r, Delivered)][:3]
    assert sandbox.control.count() == len(futures) and sandbox.control.duplicates() == {}
    attempts = sandbox.control.attempts()
    outage = [a["received_at"] for a in attempts if a["outcome"] == 503]
    # the outage really lasted (probes kept finding it down): to within 2.5 probe waits of its end
    assert max(outage) - min(outage) >= OUTAGE_SECONDS - 2.5 * policy.probe_cap
    assert len(outage) < 200  # probes, not a storm of retries
    assert client.state == "healthy"


def track(key: str, name: str, user: str = "u1") -> WigzoRequest:
    return WigzoRequest("POST", "/rest/v1/learn/event", (("org_token", SANDBOX_ORG_TOKEN),),
                        {"eventName": name, "eventval": {}, "eventCategory": "EXTERNAL", "userId": user},
                        (("Idempotency-Key", key),))


def test_a_wrong_base_url_dead_letters_at_most_the_threshold_and_holds_the_rest(
        sandbox: Sandbox, make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Every route under the wrong path answers 404: configuration, not 30 bad events."""
    client = make_client(url=sandbox.url + "/wrong", systemic_failure_threshold=5)
    stop = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.deliver, identify(f"k{n}", f"user{n}"), stop) for n in range(30)]
        wait_for(lambda: client.state == "misconfigured", 10, "misconfigured", interval=0.01)
        assert not client.accepting_work()
        wait_for(kept_probing(caplog, 1.0), 10, "probes, all refused the same way, for a second")
        assert sum(isinstance(f.result(), DeliveryFailed) for f in futures if f.done()) <= 5
        stop.set()
        results = [f.result(timeout=10) for f in futures]
    failed = [r for r in results if isinstance(r, DeliveryFailed)]
    assert 1 <= len(failed) <= 5 and all(r.rejection.http_status == 404 for r in failed)
    assert all(isinstance(r, Aborted) for r in results if not isinstance(r, DeliveryFailed))
    assert "answered 404 at /rest/v1/learn/identify" in client.problem
    assert f"WIGZO_BASE_URL looks wrong ({sandbox.url}/wrong)" in client.problem
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [client.problem]


def test_events_held_while_every_event_is_refused_are_delivered_once_wigzo_accepts_them_again(
        sandbox: Sandbox, make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A rule refusing every event (400) is switched on, then off: no operator action in between."""
    names = ("signup", "login")
    sandbox.control.set_faults(reject_event_names=list(names))
    client = make_client(systemic_failure_threshold=5)
    stop = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.deliver, track(f"k{n}", names[n % 2], f"user{n}"), stop) for n in range(30)]
        wait_for(lambda: client.state == "misconfigured", 10, "misconfigured", interval=0.01)
        wait_for(kept_probing(caplog, 1.0), 10, "probes, all refused, for a second")
        assert "Wigzo refuses every event the same way" in client.problem
        sandbox.control.set_faults(reject_event_names=[])
        results = [f.result(timeout=15) for f in futures]
    failed = [r for r in results if isinstance(r, DeliveryFailed)]
    delivered = [r for r in results if isinstance(r, Delivered)]
    assert len(failed) <= 5 and len(failed) + len(delivered) == 30
    assert all(r.rejection.http_status == 400 and "strict rule" in r.rejection.reason for r in failed)
    assert sandbox.control.count() == len(delivered) and sandbox.control.duplicates() == {}
    assert client.state == "healthy" and client.problem == "" and client.accepting_work()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in messages] == ["ERROR", "INFO"]
    assert "answered 400 at /rest/v1/learn/event" in messages[0][1]
    assert messages[1][1] == "Wigzo accepts events again: delivery resumed"


def test_requests_left_hanging_do_not_hold_delivery_at_zero_once_wigzo_answers(
        sandbox: Sandbox, make_client: Any) -> None:
    """The first 4 requests hang until the 2 s read timeout; after stall_after (0.5 s) they no longer count
    against the limit of 4, so the next requests go out and are delivered while those still hang."""
    read_timeout = 2.0
    sandbox.control.set_faults(fail_first_attempts=1, fail_with="hang")
    client = make_client(policy=replace(FAST, stall_after=0.5), max_in_flight=4, read_timeout=read_timeout)
    stop = threading.Event()
    with ThreadPoolExecutor(4 + 4) as pool:  # the spare threads the executor would start for stalled tasks
        hanging = [pool.submit(client.deliver, identify(f"h{n}", f"user{n}"), stop) for n in range(4)]
        wait_for(lambda: len(sandbox.control.attempts()) == 4, 10, "four attempts", interval=0.01)
        sandbox.control.set_faults(fail_first_attempts=0)  # Wigzo answers again
        started = time.monotonic()
        assert client.deliver(identify("fresh", "someone"), stop) == Delivered(200, 1)
        waited = time.monotonic() - started
        assert not any(f.done() for f in hanging)  # still hanging: the read timeout has not passed
        stop.set()
    assert waited < read_timeout  # delivered while the first requests still hung, not after their read timeout
