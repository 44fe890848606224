"""WigzoClient's edge without a network: transport setup, what is sent, secrets scrubbed, waits taken."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.utils import formatdate
from typing import Any

import pytest

from pipeline.config import ConfigError, Settings
from pipeline.model import Aborted, Delivered, DeliveryFailed, Secret, WigzoRequest
from pipeline.wigzo.client import USER_AGENT, WigzoClient
from pipeline.wigzo.policy import DeliveryPolicy, backoff_delay
from pipeline.wigzo.transport import RequestsTransport, Response, TransportError

ORG, API = "org-SECRET-1", "api-SECRET-2"
SETTINGS = Settings(wigzo_base_url="https://wigzo.test", wigzo_org_token=Secret(ORG),
                    wigzo_api_token=Secret(API), max_in_flight=48, connect_timeout=3.0, read_timeout=7.0)
REQUEST = WigzoRequest("POST", "/rest/v1/learn/event", (("token", API), ("org_token", ORG)),
                       {"eventName": "x"}, (("Idempotency-Key", "msg-1"),))


def response(status: int, body: str = "{}", **headers: str) -> Response:
    return Response(status, headers, body.encode(), "utf-8")


class ScriptedTransport:
    """Answers (or raises) from a script and remembers what it was asked. It has no close(): the client
    must leave a transport it was given alone."""

    def __init__(self, script: list[Response | TransportError]) -> None:
        self.script: Iterator[Response | TransportError] = iter(script)
        self.calls: list[dict[str, Any]] = []

    def send(self, method: str, url: str, **kwargs: Any) -> Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        step = next(self.script)
        if isinstance(step, TransportError):
            raise step
        return step


class SimulatedClock:
    """A monotonic clock that moves only when the code under test waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are remembered: tests take no real time.

    With a clock, each wait moves it on by the time waited; `meanwhile` runs during each wait, standing in
    for what other worker threads do in that time.
    """

    def __init__(self, stop_on_wait: bool = False, clock: SimulatedClock | None = None,
                 meanwhile: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self._stop_on_wait = stop_on_wait
        self._clock = clock
        self._meanwhile = meanwhile

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if self._clock:
            self._clock.now += timeout or 0.0
        if self._meanwhile:
            self._meanwhile()
        if self._stop_on_wait:
            self.set()
        return self.is_set()


def test_the_session_pools_as_many_connections_as_requests_in_flight() -> None:
    client = WigzoClient(SETTINGS)
    assert isinstance(client._transport, RequestsTransport)
    session = client._transport._session
    for prefix in ("https://", "http://"):
        adapter = session.get_adapter(prefix + "wigzo.test")
        assert adapter._pool_maxsize == 48  # type: ignore[attr-defined]
        assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    assert session.verify is True
    assert session.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("segment-wigzo/")
    client.close()


def test_a_ca_bundle_replaces_the_default_trust_store() -> None:
    client = WigzoClient(Settings(wigzo_base_url="https://wigzo.test", ca_bundle="/etc/wigzo-ca.pem"))
    assert isinstance(client._transport, RequestsTransport)
    assert client._transport._session.verify == "/etc/wigzo-ca.pem"


@pytest.mark.parametrize("url", ["app.wigzo.com", "ftp://app.wigzo.com", "https://"])
def test_a_base_url_that_is_not_http_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigError, match="WIGZO_BASE_URL"):
        WigzoClient(Settings(wigzo_base_url=url))


def test_the_request_goes_out_with_key_and_timeouts() -> None:
    """No redirects: the transport's contract, tested in test_transport.py."""
    transport = ScriptedTransport([response(200)])
    assert WigzoClient(SETTINGS, transport=transport).deliver(REQUEST, threading.Event()) == Delivered(200, 1)
    [call] = transport.calls
    assert call["method"] == "POST" and call["url"] == "https://wigzo.test/rest/v1/learn/event"
    assert call["params"] == REQUEST.query and call["body"] == b'{"eventName":"x"}'
    assert call["headers"]["Idempotency-Key"] == "msg-1" and call["headers"]["Content-Type"] == "application/json"
    assert call["timeout"] == (3.0, 7.0)


def test_exception_messages_are_scrubbed_of_tokens() -> None:
    leaky = TransportError(
        "InvalidHeader", f"bad header for url: https://wigzo.test/rest/v1/learn/event?token={API}&org_token={ORG}",
        transient=False)
    result = WigzoClient(SETTINGS, transport=ScriptedTransport([leaky])).deliver(REQUEST, threading.Event())
    assert isinstance(result, DeliveryFailed)
    assert result.rejection.error_class == "InvalidHeader" and result.rejection.http_status is None
    assert ORG not in repr(result) and API not in repr(result)
    assert "token=***&org_token=***" in result.rejection.reason


def test_a_body_echoing_a_token_is_scrubbed() -> None:
    transport = ScriptedTransport([response(400, f'{{"error": "bad request for token {API}"}}')])
    result = WigzoClient(SETTINGS, transport=transport).deliver(REQUEST, threading.Event())
    assert isinstance(result, DeliveryFailed) and API not in result.rejection.reason
    assert "bad request for token ***" in result.rejection.reason


def test_an_unserializable_body_is_permanent_without_sending() -> None:
    transport = ScriptedTransport([])
    request = WigzoRequest("POST", "/rest/v1/learn/event", (), {"when": object()})
    result = WigzoClient(SETTINGS, transport=transport).deliver(request, threading.Event())
    assert isinstance(result, DeliveryFailed) and result.rejection.error_class == "UnserializableBody"
    assert result.attempts == 0 and transport.calls == []


def test_backoff_waits_come_from_the_injected_rng_through_stop_wait() -> None:
    policy = DeliveryPolicy(backoff_base=1.0, backoff_cap=100.0)
    timeout = TransportError("ReadTimeout", "read timed out", transient=True)
    transport = ScriptedTransport([response(503), timeout, response(200)])
    stop = RecordingStop()
    client = WigzoClient(SETTINGS, transport=transport, rng=random.Random(42), policy=policy)
    assert client.deliver(REQUEST, stop) == Delivered(200, 3)
    expected_rng = random.Random(42)
    assert stop.waits == [backoff_delay(policy, 1, expected_rng), backoff_delay(policy, 2, expected_rng)]


def test_a_retry_after_http_date_is_measured_against_the_injected_wall_clock() -> None:
    now = 1_800_000_000.0
    transport = ScriptedTransport([response(429, **{"Retry-After": formatdate(now + 42, usegmt=True)}), response(200)])
    stop = RecordingStop()
    client = WigzoClient(SETTINGS, transport=transport, wall_clock=lambda: now, policy=DeliveryPolicy(backoff_base=0.5))
    assert client.deliver(REQUEST, stop) == Delivered(200, 2)
    [wait] = stop.waits
    assert 42.0 <= wait <= 42.5


def test_stop_during_backoff_aborts_without_an_outcome() -> None:
    transport = ScriptedTransport([response(503)])
    assert WigzoClient(SETTINGS, transport=transport).deliver(REQUEST, RecordingStop(stop_on_wait=True)) == Aborted(1)


def test_nothing_is_sent_once_stop_is_set() -> None:
    stop = threading.Event()
    stop.set()
    transport = ScriptedTransport([])
    assert WigzoClient(SETTINGS, transport=transport).deliver(REQUEST, stop) == Aborted(0)
    assert transport.calls == []


def test_a_client_leaves_a_transport_it_was_given_open() -> None:
    WigzoClient(SETTINGS, transport=ScriptedTransport([])).close()  # ScriptedTransport has no close() to call


OTHER = WigzoRequest("POST", "/rest/v1/learn/identify", (), {"userId": "u2"})


def test_an_event_failing_while_others_are_served_spends_its_budget_and_keeps_its_history() -> None:
    clock = SimulatedClock()
    # this event's 503s interleave with another event's 200 delivered while this one backs off
    transport = ScriptedTransport([response(503, "busy"), response(200), response(503), response(200),
                                   response(503, "still busy")])
    client = WigzoClient(replace(SETTINGS, max_attempts=2), transport=transport, clock=clock,
                         wall_clock=lambda: 1_800_000_000.0 + clock.now, rng=random.Random(5))
    stop = RecordingStop(clock=clock, meanwhile=lambda: client.deliver(OTHER, threading.Event()))
    result = client.deliver(REQUEST, stop)
    assert isinstance(result, DeliveryFailed)
    # the first failure counts nothing: nobody had been served since this event started
    assert result.attempts == 3 and len(result.history) == 3 and all(h.endswith(" 503") for h in result.history)
    assert result.first_failure == 1_800_000_000.0 and result.last_failure == 1_800_000_000.0 + sum(stop.waits)
    assert result.rejection.error_class == "RetryBudgetExhausted" and result.rejection.http_status == 503
    assert result.rejection.reason.startswith("gave up after 3 attempts over ")
    assert result.rejection.reason.endswith("last answer 503: still busy")
    assert len(transport.calls) == 5


def test_a_429_never_spends_the_budget_even_while_others_are_served() -> None:
    clock = SimulatedClock()
    transport = ScriptedTransport([response(429), response(200)] * 3 + [response(200)])
    client = WigzoClient(replace(SETTINGS, max_attempts=1), transport=transport, clock=clock)
    stop = RecordingStop(clock=clock, meanwhile=lambda: client.deliver(OTHER, threading.Event()))
    assert client.deliver(REQUEST, stop) == Delivered(200, 4)


def test_failures_while_nobody_is_served_never_dead_letter() -> None:
    clock = SimulatedClock()
    transport = ScriptedTransport([TransportError("ConnectionError", "refused", transient=True)] * 12
                                  + [response(200)])
    client = WigzoClient(replace(SETTINGS, max_attempts=1, retry_budget_seconds=0.1), transport=transport,
                         clock=clock)
    assert client.deliver(REQUEST, RecordingStop(clock=clock)) == Delivered(200, 13)
    assert client.state == "healthy"  # the circuit opened on the way and the probe closed it


def test_a_rejected_token_holds_the_event_at_the_gate_without_backing_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = SimulatedClock()
    policy = DeliveryPolicy(backoff_base=50.0, backoff_cap=100.0, auth_probe_base=2.0, gate_poll=0.1)
    transport = ScriptedTransport([response(401), response(200)])
    client = WigzoClient(SETTINGS, transport=transport, clock=clock, policy=policy, rng=random.Random(1))
    states: set[str] = set()
    stop = RecordingStop(clock=clock, meanwhile=lambda: states.add(client.state))
    with caplog.at_level(logging.INFO, logger="pipeline.wigzo.client"):
        assert client.deliver(REQUEST, stop) == Delivered(200, 2)
    assert states == {"auth_failed"} and client.accepting_work()
    assert stop.waits and all(wait <= 0.1 for wait in stop.waits)  # the gate's polls, never a backoff
    assert 2.0 <= sum(stop.waits) <= 2.0 * 1.2 + 0.1
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
    assert "accepts the token again" in caplog.records[1].getMessage()
