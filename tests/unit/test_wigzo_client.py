"""WigzoClient's edge without a network: session setup, what is sent, secrets scrubbed, waits taken."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
import requests

from pipeline.config import ConfigError, Settings
from pipeline.model import Aborted, Delivered, DeliveryFailed, Secret, WigzoRequest
from pipeline.wigzo.client import USER_AGENT, WigzoClient
from pipeline.wigzo.policy import DeliveryPolicy, backoff_delay

ORG, API = "org-SECRET-1", "api-SECRET-2"
SETTINGS = Settings(wigzo_base_url="https://wigzo.test", wigzo_org_token=Secret(ORG),
                    wigzo_api_token=Secret(API), max_in_flight=48, connect_timeout=3.0, read_timeout=7.0)
REQUEST = WigzoRequest("POST", "/rest/v1/learn/event", (("token", API), ("org_token", ORG)),
                       {"eventName": "x"}, (("Idempotency-Key", "msg-1"),))


def response(status: int, body: str = "{}", **headers: str) -> requests.Response:
    answer = requests.Response()
    answer.status_code = status
    answer._content = body.encode()
    answer.headers.update(headers)
    return answer


class ScriptedSession(requests.Session):
    """Answers (or raises) from a script and remembers what it was asked."""

    def __init__(self, script: list[requests.Response | Exception]) -> None:
        super().__init__()
        self.script: Iterator[requests.Response | Exception] = iter(script)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.calls.append({"method": method, "url": url, **kwargs})
        step = next(self.script)
        if isinstance(step, Exception):
            raise step
        return step


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are remembered: tests take no real time."""

    def __init__(self, stop_on_wait: bool = False) -> None:
        super().__init__()
        self.waits: list[float] = []
        self._stop_on_wait = stop_on_wait

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if self._stop_on_wait:
            self.set()
        return self.is_set()


def test_the_session_pools_as_many_connections_as_requests_in_flight() -> None:
    client = WigzoClient(SETTINGS)
    session = client._session
    for prefix in ("https://", "http://"):
        adapter = session.get_adapter(prefix + "wigzo.test")
        assert adapter._pool_maxsize == 48  # type: ignore[attr-defined]
        assert adapter.max_retries.total == 0  # type: ignore[attr-defined]
    assert session.verify is True
    assert session.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("segment-wigzo/")
    client.close()


def test_a_ca_bundle_replaces_the_default_trust_store() -> None:
    client = WigzoClient(Settings(wigzo_base_url="https://wigzo.test", ca_bundle="/etc/wigzo-ca.pem"))
    assert client._session.verify == "/etc/wigzo-ca.pem"


@pytest.mark.parametrize("url", ["app.wigzo.com", "ftp://app.wigzo.com", "https://"])
def test_a_base_url_that_is_not_http_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigError, match="WIGZO_BASE_URL"):
        WigzoClient(Settings(wigzo_base_url=url))


def test_the_request_goes_out_with_key_timeouts_and_no_redirects() -> None:
    session = ScriptedSession([response(200)])
    assert WigzoClient(SETTINGS, session=session).deliver(REQUEST, threading.Event()) == Delivered(200, 1)
    [call] = session.calls
    assert call["url"] == "https://wigzo.test/rest/v1/learn/event"
    assert call["params"] == REQUEST.query and call["data"] == b'{"eventName":"x"}'
    assert call["headers"]["Idempotency-Key"] == "msg-1" and call["headers"]["Content-Type"] == "application/json"
    assert call["timeout"] == (3.0, 7.0) and call["allow_redirects"] is False


def test_exception_messages_are_scrubbed_of_tokens() -> None:
    leaky = requests.exceptions.InvalidHeader(
        f"bad header for url: https://wigzo.test/rest/v1/learn/event?token={API}&org_token={ORG}")
    result = WigzoClient(SETTINGS, session=ScriptedSession([leaky])).deliver(REQUEST, threading.Event())
    assert isinstance(result, DeliveryFailed)
    assert result.rejection.error_class == "InvalidHeader" and result.rejection.http_status is None
    assert ORG not in repr(result) and API not in repr(result)
    assert "token=***&org_token=***" in result.rejection.reason


def test_a_body_echoing_a_token_is_scrubbed() -> None:
    session = ScriptedSession([response(400, f'{{"error": "bad request for token {API}"}}')])
    result = WigzoClient(SETTINGS, session=session).deliver(REQUEST, threading.Event())
    assert isinstance(result, DeliveryFailed) and API not in result.rejection.reason
    assert "bad request for token ***" in result.rejection.reason


def test_an_unserializable_body_is_permanent_without_sending() -> None:
    session = ScriptedSession([])
    request = WigzoRequest("POST", "/rest/v1/learn/event", (), {"when": object()})
    result = WigzoClient(SETTINGS, session=session).deliver(request, threading.Event())
    assert isinstance(result, DeliveryFailed) and result.rejection.error_class == "UnserializableBody"
    assert result.attempts == 0 and session.calls == []


def test_backoff_waits_come_from_the_injected_rng_through_stop_wait() -> None:
    policy = DeliveryPolicy(backoff_base=1.0, backoff_cap=100.0)
    session = ScriptedSession([response(503), requests.ReadTimeout("read timed out"), response(200)])
    stop = RecordingStop()
    client = WigzoClient(SETTINGS, session=session, rng=random.Random(42), policy=policy)
    assert client.deliver(REQUEST, stop) == Delivered(200, 3)
    expected_rng = random.Random(42)
    assert stop.waits == [backoff_delay(policy, 1, expected_rng), backoff_delay(policy, 2, expected_rng)]


def test_a_retry_after_http_date_is_measured_against_the_injected_wall_clock() -> None:
    now = 1_800_000_000.0
    session = ScriptedSession([response(429, **{"Retry-After": formatdate(now + 42, usegmt=True)}), response(200)])
    stop = RecordingStop()
    client = WigzoClient(SETTINGS, session=session, wall_clock=lambda: now, policy=DeliveryPolicy(backoff_base=0.5))
    assert client.deliver(REQUEST, stop) == Delivered(200, 2)
    [wait] = stop.waits
    assert 42.0 <= wait <= 42.5


def test_stop_during_backoff_aborts_without_an_outcome() -> None:
    session = ScriptedSession([response(503)])
    assert WigzoClient(SETTINGS, session=session).deliver(REQUEST, RecordingStop(stop_on_wait=True)) == Aborted(1)


def test_nothing_is_sent_once_stop_is_set() -> None:
    stop = threading.Event()
    stop.set()
    session = ScriptedSession([])
    assert WigzoClient(SETTINGS, session=session).deliver(REQUEST, stop) == Aborted(0)
    assert session.calls == []
