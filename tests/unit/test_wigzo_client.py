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
from prometheus_client import REGISTRY

from pipeline.config import ConfigError, Settings
from pipeline.model import (
    Aborted,
    Delivered,
    DeliveryFailed,
    Secret,
    Wait,
    WigzoRequest,
)
from pipeline.wigzo.client import USER_AGENT, WigzoClient
from pipeline.wigzo.policy import DeliveryPolicy, backoff_delay
from pipeline.wigzo.transport import RequestsTransport, Response, TransportError
from tests.fakes.clock import SimulatedClock

ORG, API = "org-SECRET-1", "api-SECRET-2"
SETTINGS = Settings(wigzo_base_url="https://wigzo.test", wigzo_org_token=Secret(ORG),
                    wigzo_api_token=Secret(API), max_in_flight=48, connect_timeout=3.0, read_timeout=7.0)
POLICY = DeliveryPolicy.from_settings(SETTINGS)  # as the client builds it from SETTINGS
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


def test_the_transport_pools_a_connection_for_every_request_that_can_be_on_the_wire() -> None:
    """max_in_flight (48 here), and as many again for requests left hanging, which stop counting against it."""
    client = WigzoClient(SETTINGS)
    assert isinstance(client._live.transport, RequestsTransport)
    adapter = client._live.transport._adapter
    assert adapter._pool_maxsize == 96  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0
    assert client._live.transport._session.verify is True
    assert client._live.transport._headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("segment-wigzo/")
    client.close()


def test_a_ca_bundle_replaces_the_default_trust_store() -> None:
    client = WigzoClient(Settings(wigzo_base_url="https://wigzo.test", ca_bundle="/etc/wigzo-ca.pem"))
    assert isinstance(client._live.transport, RequestsTransport)
    assert client._live.transport._session.verify == "/etc/wigzo-ca.pem"


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
    policy = replace(POLICY, backoff_base=1.0, backoff_cap=100.0)
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
    client = WigzoClient(SETTINGS, transport=transport, wall_clock=lambda: now,
                         policy=replace(POLICY, backoff_base=0.5))
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
    policy = replace(POLICY, backoff_base=50.0, backoff_cap=100.0, auth_probe_base=2.0, gate_poll=0.1)
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


def keyed(key: str, path: str = "/rest/v1/learn/event") -> WigzoRequest:
    return WigzoRequest("POST", path, (("org_token", ORG),), {"eventName": "x"}, (("Idempotency-Key", key),))


def test_a_step_makes_one_attempt_and_says_how_long_to_wait_instead_of_sleeping() -> None:
    clock = SimulatedClock()
    transport = ScriptedTransport([response(503), response(429, **{"Retry-After": "7"}), response(200)])
    client = WigzoClient(SETTINGS, transport=transport, clock=clock, rng=random.Random(2),
                         policy=replace(POLICY, backoff_base=1.0))
    attempts, stop = client.start(REQUEST), threading.Event()
    backoff = client.attempt(attempts, stop)
    assert isinstance(backoff, Wait) and backoff.wake == () and 0.0 <= backoff.seconds <= 2.0
    throttled = client.attempt(attempts, stop)
    assert isinstance(throttled, Wait) and 7.0 <= throttled.seconds <= 8.0  # never before Retry-After
    assert client.attempt(attempts, stop) == Delivered(200, 3)
    assert len(transport.calls) == 3 and clock.now == 0.0  # nobody slept


def test_a_step_after_stop_aborts_without_sending() -> None:
    transport = ScriptedTransport([response(503)])
    client, stop = WigzoClient(SETTINGS, transport=transport), threading.Event()
    attempts = client.start(REQUEST)
    assert isinstance(client.attempt(attempts, stop), Wait)
    stop.set()
    assert client.attempt(attempts, stop) == Aborted(1) and len(transport.calls) == 1


def misconfigured_client(script: list[Response | TransportError], clock: SimulatedClock,
                         threshold: int = 3) -> tuple[WigzoClient, ScriptedTransport]:
    transport = ScriptedTransport(script)
    policy = replace(POLICY, auth_probe_base=1.0, auth_probe_cap=5.0, gate_poll=0.1)
    client = WigzoClient(replace(SETTINGS, systemic_failure_threshold=threshold, wigzo_base_url="https://wigzo.test/v2"),
                         transport=transport, clock=clock, policy=policy, rng=random.Random(4))
    return client, transport


def test_the_same_404_for_threshold_events_pauses_delivery_instead_of_dead_lettering(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = SimulatedClock()
    not_found = response(404, '{"error": "no such route"}')
    client, transport = misconfigured_client([not_found] * 4 + [response(200), not_found], clock)
    with caplog.at_level(logging.INFO, logger="pipeline.wigzo.client"):
        first, second = (client.deliver(keyed(f"e{n}"), threading.Event()) for n in (1, 2))
        assert isinstance(first, DeliveryFailed) and isinstance(second, DeliveryFailed)
        assert client.state == "healthy" and client.problem == ""
        seen: list[tuple[str, bool, str, float]] = []
        stop = RecordingStop(clock=clock, meanwhile=lambda: seen.append(
            (client.state, client.accepting_work(), client.problem, sample("wigzo_pipeline_misconfigured"))))
        # the third event completes the streak: held, not dead-lettered; a probe (404 again) keeps it held;
        # the next probe is accepted, as if Wigzo's route were back
        assert client.deliver(keyed("e3"), stop) == Delivered(200, 3)
    states = {(state, accepting) for state, accepting, _, _ in seen}
    assert states == {("misconfigured", False)} and all(gauge == 1.0 for *_, gauge in seen)
    problem = seen[0][2]
    assert problem.startswith("the last 3 events were all answered 404 at /rest/v1/learn/event (")
    assert "WIGZO_BASE_URL looks wrong (https://wigzo.test/v2)" in problem
    assert "nothing more is dead-lettered, probing every ~5 s" in problem
    assert max(stop.waits) <= 0.1 and sum(stop.waits) <= 1.2 + 2.4 + 0.1  # the gate's probes: ~1 s, then ~2 s
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO] == [
        ("ERROR", problem), ("INFO", "Wigzo accepts events again: delivery resumed")]
    assert client.state == "healthy" and client.problem == "" and sample("wigzo_pipeline_misconfigured") == 0.0
    # the delivery restarted the count: the next 404 is that event's own
    assert isinstance(client.deliver(keyed("e4"), threading.Event()), DeliveryFailed)
    assert len(transport.calls) == 6


def test_a_held_event_is_aborted_by_stop() -> None:
    clock = SimulatedClock()
    client, transport = misconfigured_client([response(404)], clock, threshold=1)
    assert client.deliver(keyed("e1"), RecordingStop(stop_on_wait=True, clock=clock)) == Aborted(1)
    assert client.state == "misconfigured" and len(transport.calls) == 1


def test_a_request_that_cannot_be_built_for_threshold_events_names_the_setting() -> None:
    clock = SimulatedClock()
    invalid = TransportError("InvalidURL", "Failed to parse: https://wigzo.test:99999/x", transient=False)
    client, _ = misconfigured_client([invalid] * 3, clock)
    for n in (1, 2):
        assert isinstance(client.deliver(keyed(f"e{n}"), threading.Event()), DeliveryFailed)
    attempts = client.start(keyed("e3"))
    assert client.attempt(attempts, threading.Event()) == Wait(0.0)  # held: back to the gate
    gate = client.attempt(attempts, threading.Event())
    assert isinstance(gate, Wait) and len(gate.wake) == 1 and not gate.wake[0].is_set()
    assert client.problem.startswith("the last 3 events were all failed with InvalidURL (Failed to parse")
    assert "WIGZO_BASE_URL looks wrong" in client.problem


def test_a_400_for_every_event_points_at_the_mapping() -> None:
    client, _ = misconfigured_client([response(400, '{"error": "eventval is required"}')] * 3, SimulatedClock())
    for n in range(3):
        client.attempt(client.start(keyed(f"e{n}")), threading.Event())
    assert client.state == "misconfigured"
    assert "eventval is required" in client.problem and "WIGZO_EVENT_MAP" in client.problem


class HangingTransport:
    """Answers 200 at once, except for the keys told to hang: those wait until released, then answer 200."""

    def __init__(self, hang: set[str]) -> None:
        self.hang = hang
        self.release = threading.Event()
        self.calls: list[str] = []

    def send(self, method: str, url: str, **kwargs: Any) -> Response:
        key = kwargs["headers"]["Idempotency-Key"]
        self.calls.append(key)
        if key in self.hang:
            self.release.wait(5)
        return response(200)


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached")


def test_requests_hanging_past_stall_after_stop_holding_their_slots(caplog: pytest.LogCaptureFixture) -> None:
    clock = SimulatedClock()
    hung = [f"h{n}" for n in range(4)]
    transport = HangingTransport(set(hung))
    client = WigzoClient(replace(SETTINGS, max_in_flight=4), transport=transport, clock=clock,
                         policy=replace(POLICY, stall_after=3.0, gate_poll=0.01))
    stop = threading.Event()
    in_flight = sample("wigzo_pipeline_in_flight")
    hanging = [threading.Thread(target=client.deliver, args=(keyed(key), stop)) for key in hung]
    for thread in hanging:
        thread.start()
    wait_until(lambda: len(transport.calls) == 4)
    assert sample("wigzo_pipeline_in_flight") == in_flight + 4
    assert client.attempt(client.start(keyed("m0")), stop) == Wait(0.0)  # every slot taken: step again later
    clock.now += 3.0  # Wigzo has left them hanging for stall_after
    with caplog.at_level(logging.WARNING, logger="pipeline.wigzo.client"):
        assert client.attempt(client.start(keyed("m1")), stop) == Delivered(200, 1)
    assert client.state == "throttled"  # a stall lowers the limit (4 -> 2), so hanging requests stay bounded
    assert sample("wigzo_pipeline_concurrency_limit") == 2.0
    assert "no answer for 3 s: lowering concurrency to 2" in caplog.text
    transport.release.set()
    for thread in hanging:
        thread.join(5)
    assert sorted(transport.calls) == [*hung, "m1"]
    assert sample("wigzo_pipeline_in_flight") == in_flight


def sample(name: str, **labels: str) -> float:
    """A metric of the clients of the default destination (every client here serves that one)."""
    return REGISTRY.get_sample_value(name, {"destination": "default", **labels}) or 0.0


def test_each_attempt_is_counted_by_answer_and_each_retry_by_reason() -> None:
    clock = SimulatedClock()
    script: list[Response | TransportError] = [
        response(429, **{"Retry-After": "0"}), response(503), TransportError("ConnectionError", "refused",
                                                                             transient=True), response(200)]
    client = WigzoClient(SETTINGS, transport=ScriptedTransport(script), clock=clock)
    classes = ("2xx", "4xx", "5xx", "error")
    reasons = ("throttled", "server_error", "network", "auth", "misconfigured")
    before = ({c: sample("wigzo_pipeline_http_requests_total", status_class=c) for c in classes},
              {r: sample("wigzo_pipeline_retries_total", reason=r) for r in reasons},
              sample("wigzo_pipeline_http_request_duration_seconds_count"))
    assert client.deliver(REQUEST, RecordingStop(clock=clock)) == Delivered(200, 4)
    requests = {c: sample("wigzo_pipeline_http_requests_total", status_class=c) - before[0][c] for c in classes}
    retries = {r: sample("wigzo_pipeline_retries_total", reason=r) - before[1][r] for r in reasons}
    assert requests == {"2xx": 1, "4xx": 1, "5xx": 1, "error": 1}
    assert retries == {"throttled": 1, "server_error": 1, "network": 1, "auth": 0, "misconfigured": 0}
    assert sample("wigzo_pipeline_http_request_duration_seconds_count") - before[2] == 4
    assert sample("wigzo_pipeline_concurrency_limit") == SETTINGS.max_in_flight


def test_a_rejected_token_sets_the_auth_gauge_while_it_lasts() -> None:
    clock = SimulatedClock()
    client = WigzoClient(SETTINGS, transport=ScriptedTransport([response(401), response(200)]), clock=clock,
                         policy=replace(POLICY, auth_probe_base=1.0))
    auth_retries = sample("wigzo_pipeline_retries_total", reason="auth")
    gauges: set[tuple[float, float, float]] = set()
    stop = RecordingStop(clock=clock, meanwhile=lambda: gauges.add(
        tuple(sample(f"wigzo_pipeline_{name}") for name in ("auth_failed", "circuit_open", "misconfigured"))))
    assert client.deliver(REQUEST, stop) == Delivered(200, 2)
    assert gauges == {(1.0, 0.0, 0.0)} and sample("wigzo_pipeline_auth_failed") == 0.0
    assert sample("wigzo_pipeline_retries_total", reason="auth") == auth_retries + 1


def test_a_window_of_429s_lowers_concurrency_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = SimulatedClock()
    policy = replace(POLICY, throttle_window=4, throttle_ratio=0.5, backoff_base=0.0)
    transport = ScriptedTransport([response(429, **{"Retry-After": "0"})] * 8 + [response(200)])
    client = WigzoClient(SETTINGS, transport=transport, clock=clock, policy=policy)
    with caplog.at_level(logging.WARNING, logger="pipeline.wigzo.client"):
        attempts = client.start(REQUEST)
        while isinstance(client.attempt(attempts, threading.Event()), Wait):
            clock.now += 1.0
    assert client.state == "throttled" and sample("wigzo_pipeline_concurrency_limit") == 12.0  # 48 / 2 / 2
    assert [r.getMessage() for r in caplog.records] == [
        "Wigzo is throttling (50% or more of the last 4 answers were HTTP 429): lowering concurrency to 24 "
        "requests in flight"]


# ---- settings that change while running ---------------------------------------------------------------------


def _with_token_file(tmp_path: Any, token: str) -> tuple[Settings, Any]:
    """SETTINGS with the org token read from a file, as WIGZO_ORG_TOKEN_FILE leaves it."""
    path = tmp_path / "org-token"
    path.write_text(token + "\n")
    return replace(SETTINGS, secret_files={"wigzo_org_token": str(path)}), path


def test_a_rejected_token_whose_file_holds_a_new_one_is_retried_at_once_with_it(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A token rotated in Wigzo and in its Secret at about the same time: no pause, no dead letter."""
    settings, path = _with_token_file(tmp_path, ORG)
    transport = ScriptedTransport([response(401), response(200)])
    client = WigzoClient(settings, transport=transport, destination="brand_a")
    path.write_text("org-ROTATED-3\n")
    with caplog.at_level(logging.INFO, logger="pipeline.wigzo.client"):
        attempts = client.start(REQUEST)
        assert client.attempt(attempts, threading.Event()) == Wait(0.0), "at once"
        assert client.accepting_work() and client.state == "healthy", "never paused"
        assert client.attempt(attempts, threading.Event()) == Delivered(200, 2)
    assert [dict(call["params"])["org_token"] for call in transport.calls] == [ORG, "org-ROTATED-3"]
    assert dict(transport.calls[1]["params"])["token"] == API, "the API token, not from a file, is kept"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("destination brand_a: Wigzo rejected the token (HTTP 401) and its file holds a new one")
    assert "ROTATED" not in caplog.text


def test_a_rejected_token_whose_file_is_unchanged_pauses_delivery(tmp_path: Any) -> None:
    settings, _ = _with_token_file(tmp_path, ORG)
    client = WigzoClient(settings, transport=ScriptedTransport([response(401)]))
    assert client.attempt(client.start(REQUEST), threading.Event()) == Wait(0.0)
    assert not client.accepting_work() and client.state == "auth_failed"


def test_a_reload_reaches_the_next_attempt_of_a_request_already_under_way() -> None:
    """A retry after a change uses the new token, base URL and timeouts; the request itself was mapped before."""
    clock = SimulatedClock()
    transport = ScriptedTransport([response(503), response(200)])
    client = WigzoClient(SETTINGS, transport=transport, clock=clock, policy=replace(POLICY, backoff_base=0.0))
    attempts = client.start(REQUEST)
    assert isinstance(client.attempt(attempts, threading.Event()), Wait)
    changed = replace(SETTINGS, wigzo_base_url="https://eu.wigzo.test/", wigzo_org_token=Secret("org-NEW-4"),
                      wigzo_api_token=Secret(""), read_timeout=11.0)
    client.reconfigure(changed, {"wigzo_base_url", "wigzo_org_token", "wigzo_api_token", "read_timeout"})
    assert client.attempt(attempts, threading.Event()) == Delivered(200, 2)
    first, second = transport.calls
    assert first["url"] == "https://wigzo.test/rest/v1/learn/event" and first["params"] == REQUEST.query
    assert second["url"] == "https://eu.wigzo.test/rest/v1/learn/event"
    assert second["params"] == (("org_token", "org-NEW-4"),) and second["timeout"] == (3.0, 11.0)


def test_a_reload_while_the_token_is_rejected_probes_at_once() -> None:
    clock = SimulatedClock()
    transport = ScriptedTransport([response(401), response(200)])
    client = WigzoClient(SETTINGS, transport=transport, clock=clock, policy=replace(POLICY, auth_probe_base=5.0))
    paused, waiting = client.start(REQUEST), client.start(REQUEST)
    assert client.attempt(paused, threading.Event()) == Wait(0.0) and client.state == "auth_failed"
    gate = client.attempt(waiting, threading.Event())
    assert isinstance(gate, Wait) and gate.seconds >= 5.0, "the next probe is seconds away"
    client.reconfigure(replace(SETTINGS, wigzo_org_token=Secret("org-NEW-5")), {"wigzo_org_token"})
    assert all(event.is_set() for event in gate.wake), "those waiting for the gate are woken"
    assert client.attempt(waiting, threading.Event()) == Delivered(200, 1), "probed at once, with the new token"
    assert client.accepting_work()


def test_a_reload_resizes_the_concurrency_limit_of_its_destination_only() -> None:
    client = WigzoClient(SETTINGS, transport=ScriptedTransport([]), destination="brand_b")
    other = sample("wigzo_pipeline_concurrency_limit")
    client.reconfigure(replace(SETTINGS, max_in_flight=12), {"max_in_flight"})
    assert REGISTRY.get_sample_value("wigzo_pipeline_concurrency_limit", {"destination": "brand_b"}) == 12.0
    assert sample("wigzo_pipeline_concurrency_limit") == other


def test_a_reload_with_a_new_ca_bundle_gets_a_new_transport_and_keeps_the_old_for_requests_under_way() -> None:
    client = WigzoClient(SETTINGS)
    before = client._live.transport
    client.reconfigure(replace(SETTINGS, ca_bundle="/etc/new-ca.pem"), {"ca_bundle"})
    after = client._live.transport
    assert isinstance(after, RequestsTransport) and after is not before
    assert after._session.verify == "/etc/new-ca.pem"
    client.close()
