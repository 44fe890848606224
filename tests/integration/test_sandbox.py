"""The Wigzo sandbox over real HTTP: Wigzo's checks, the control API, and every fault."""

from __future__ import annotations

import copy
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from typing import Any

import pytest
import requests

from pipeline.dev.sandbox import Faults, SandboxControl, SandboxError, SandboxServer
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox

pytestmark = pytest.mark.integration

IDENTIFY = "/rest/v1/learn/identify"
EVENT = "/rest/v1/learn/event"
GOOD_IDENTIFY = {"userId": "u1", "email": "u1@example.com"}
GOOD_ORDER = {"eventName": "order_completed", "eventCategory": "EXTERNAL", "userId": "u1",
              "eventval": {"orderId": "o1", "customer_id": "u1",
                           "line_items": [{"product_id": "p1", "variant_id": "v1", "quantity": 1},
                                          {"product_id": "p2", "variant_id": "v2", "quantity": 3}]}}
GOOD_VIEW = {"eventName": "product_view", "eventCategory": "EXTERNAL", "userId": "u1",
             "eventval": {"productId": "p1", "canonicalUrl": "https://shop.example/p1"}}


def post(url: str, path: str, body: Any, key: str = "k1", org_token: str | None = SANDBOX_ORG_TOKEN,
         session: requests.Session | None = None, **params: str) -> requests.Response:
    query = dict(params)
    if org_token is not None:
        query["org_token"] = org_token
    return (session or requests).post(url + path, params=query, json=body, headers={"Idempotency-Key": key},
                                      timeout=5)


def test_an_accepted_request_gets_200_and_is_recorded_with_its_key_and_attempt(sandbox: Sandbox) -> None:
    before = time.time()
    response = post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="m-1")
    assert response.status_code == 200
    assert response.json()["status"] == "success"
    [record] = sandbox.control.received()
    assert record["path"] == IDENTIFY and record["body"] == GOOD_IDENTIFY
    assert record["idempotency_key"] == "m-1" and record["attempt"] == 1
    assert before <= record["received_at"] <= time.time()
    assert sandbox.control.count() == 1


@pytest.mark.parametrize("body, field", [
    ({"email": "a@b.c"}, "userId"),
    ({"userId": "", "email": "a@b.c"}, "userId"),
    ({"userId": "u1"}, "email"),
    ({"userId": "u1", "email": "", "phone": None}, "email"),
])
def test_identify_requires_user_id_and_email_or_phone(sandbox: Sandbox, body: dict[str, Any], field: str) -> None:
    response = post(sandbox.url, IDENTIFY, body)
    assert response.status_code == 400
    assert response.json()["field"] == field and response.json()["status"] == "error"
    assert sandbox.control.count() == 0


def test_identify_with_only_a_phone_is_accepted(sandbox: Sandbox) -> None:
    assert post(sandbox.url, IDENTIFY, {"userId": "u1", "phone": "+15550100"}).status_code == 200


def without(body: dict[str, Any], path: str) -> dict[str, Any]:
    """A deep copy of `body` without the field at the dotted `path` (list indexes as numbers)."""
    changed = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[int(last) if last.isdigit() else last]
    return changed


@pytest.mark.parametrize("body, field", [
    (without(GOOD_VIEW, "eventName"), "eventName"),
    (without(GOOD_VIEW, "userId"), "userId"),
    ({**GOOD_VIEW, "eventCategory": "INTERNAL"}, "eventCategory"),
    (without(GOOD_VIEW, "eventCategory"), "eventCategory"),
    ({**GOOD_VIEW, "eventval": "p1"}, "eventval"),
    (without(GOOD_VIEW, "eventval.productId"), "eventval.productId"),
    (without(GOOD_VIEW, "eventval.canonicalUrl"), "eventval.canonicalUrl"),
    (without(GOOD_ORDER, "eventval.orderId"), "eventval.orderId"),
    (without(GOOD_ORDER, "eventval.customer_id"), "eventval.customer_id"),
    (without(GOOD_ORDER, "eventval.line_items"), "eventval.line_items"),
    (without(GOOD_ORDER, "eventval.line_items.1.variant_id"), "eventval.line_items[1].variant_id"),
    (without(GOOD_ORDER, "eventval.line_items.0.product_id"), "eventval.line_items[0].product_id"),
    (without(GOOD_ORDER, "eventval.line_items.1.quantity"), "eventval.line_items[1].quantity"),
])
def test_event_checks_name_the_missing_field(sandbox: Sandbox, body: dict[str, Any], field: str) -> None:
    response = post(sandbox.url, EVENT, body)
    assert response.status_code == 400
    assert response.json()["field"] == field


@pytest.mark.parametrize("body", [
    GOOD_VIEW, GOOD_ORDER,
    {"eventName": "addtocart", "eventCategory": "EXTERNAL", "userId": "u1", "eventval": {"productId": "p1"}},
    {"eventName": "custom", "eventCategory": "EXTERNAL", "userId": "u1", "eventval": {}},
])
def test_well_formed_events_are_accepted(sandbox: Sandbox, body: dict[str, Any]) -> None:
    assert post(sandbox.url, EVENT, body).status_code == 200


@pytest.mark.parametrize("org_token", [None, "", "wrong"])
def test_a_missing_or_wrong_org_token_gets_401(sandbox: Sandbox, org_token: str | None) -> None:
    response = post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, org_token=org_token)
    assert response.status_code == 401
    assert response.json()["field"] == "org_token"
    assert sandbox.control.count() == 0


def test_the_api_token_is_ignored_unless_configured(sandbox: Sandbox) -> None:
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, token="anything").status_code == 200


def test_a_configured_api_token_is_required_and_must_match() -> None:
    with SandboxServer(org_token="org", api_token="api") as server:
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, org_token="org").status_code == 401
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, org_token="org", token="nope").status_code == 401
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, org_token="org", token="api").status_code == 200


def test_several_org_tokens_stand_for_several_organizations_and_each_request_says_which_it_carried() -> None:
    with SandboxServer(org_token=("org-a", "org-b")) as server:
        control = SandboxControl(server.url)
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, key="a", org_token="org-a").status_code == 200
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, key="b", org_token="org-b").status_code == 200
        assert post(server.url, IDENTIFY, GOOD_IDENTIFY, key="c", org_token="org-c").status_code == 401
        assert [(r["idempotency_key"], r["org_token"]) for r in control.received()] == [("a", "org-a"), ("b", "org-b")]


def test_the_org_tokens_can_be_rotated_and_reset_restores_them(sandbox: Sandbox) -> None:
    sandbox.control.set_org_tokens("rotated")
    assert sandbox.control.org_tokens() == ["rotated"]
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="old").status_code == 401
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="new", org_token="rotated").status_code == 200
    with pytest.raises(SandboxError, match="org_tokens"):
        sandbox.control.set_org_tokens()
    sandbox.control.reset()
    assert sandbox.control.org_tokens() == [SANDBOX_ORG_TOKEN]


def test_malformed_bodies_and_unknown_routes(sandbox: Sandbox) -> None:
    params = {"org_token": SANDBOX_ORG_TOKEN}
    assert requests.post(sandbox.url + IDENTIFY, params=params, data=b"{not json", timeout=5).status_code == 400
    assert post(sandbox.url, IDENTIFY, ["userId"]).status_code == 400
    assert requests.post(sandbox.url + "/rest/v1/learn/other", params=params, json={}, timeout=5).status_code == 404
    assert requests.get(sandbox.url + IDENTIFY, params=params, timeout=5).status_code == 405
    too_big = {"userId": "u1", "email": "a@b.c", "padding": "x" * (1024 * 1024)}
    assert post(sandbox.url, IDENTIFY, too_big).status_code == 413


def test_duplicates_count_keys_accepted_more_than_once(sandbox: Sandbox) -> None:
    for key in ("a", "a", "b", "c", "c", "c"):
        post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key=key)
    post(sandbox.url, IDENTIFY, {"userId": "u1"}, key="b")  # seen, but rejected: not a duplicate acceptance
    assert sandbox.control.duplicates() == {"a": 2, "c": 3}
    assert [r["attempt"] for r in sandbox.control.received()] == [1, 2, 1, 1, 2, 3]


def test_attempts_count_every_request_including_faulted_ones(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(fail_first_attempts=2, fail_with="503")
    statuses = [post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="k").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert [(a["attempt"], a["outcome"]) for a in sandbox.control.attempts()] == [(1, 503), (2, 503), (3, 200)]
    [record] = sandbox.control.received()
    assert record["attempt"] == 3


def test_reset_forgets_requests_and_restores_the_starting_faults() -> None:
    with SandboxServer(org_token="org", faults=Faults(reject_event_names=("search",))) as server:
        control = SandboxControl(server.url)
        control.set_faults(error_rate=1.0)
        post(server.url, IDENTIFY, GOOD_IDENTIFY, org_token="org")
        control.reset()
        assert control.count() == 0 and control.attempts() == []
        faults = control.faults()
        assert faults["error_rate"] == 0.0 and faults["reject_event_names"] == ["search"]


@pytest.mark.parametrize("faults, message", [
    ({"error_rat": 0.5}, "unknown fault error_rat"),
    ({"error_rate": 1.5}, "between 0 and 1"),
    ({"latency_ms": "slow"}, "must be a number"),
    ({"unauthorized": "yes"}, "true or false"),
    ({"fail_with": "explode"}, "fail_with"),
    ({"reject_event_names": "search"}, "list of strings"),
])
def test_bad_faults_are_refused_with_a_reason(sandbox: Sandbox, faults: dict[str, Any], message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        sandbox.control.set_faults(**faults)


def test_arrival_order_is_recorded_faithfully(sandbox: Sandbox) -> None:
    def send(user: str) -> None:
        with requests.Session() as session:
            for n in range(40):
                post(sandbox.url, IDENTIFY, {"userId": user, "email": f"{n}@x"}, key=f"{user}-{n}", session=session)

    threads = [threading.Thread(target=send, args=(f"user{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received = sandbox.control.received()
    assert len(received) == 160
    for i in range(4):
        keys = [r["idempotency_key"] for r in received if r["body"]["userId"] == f"user{i}"]
        assert keys == [f"user{i}-{n}" for n in range(40)]
    times = [r["received_at"] for r in received]
    assert times == sorted(times)


def test_keep_alive_serves_many_requests_on_one_connection(sandbox: Sandbox) -> None:
    opened = sandbox.control.stats()["connections_opened"]
    with requests.Session() as session:
        for n in range(50):
            assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key=str(n), session=session).status_code == 200
    assert sandbox.control.stats()["connections_opened"] == opened + 1


def raw_exchange(url: str, payload: bytes, expect: int) -> list[str]:
    """Send raw bytes, read until `expect` responses arrived or the server closed; return the status lines."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while data.count(b"HTTP/1.1 ") < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return re.findall(r"HTTP/1\.1 \d{3} [^\r]*", data.decode())


def identify_bytes(key: str, connection: str = "keep-alive") -> bytes:
    body = b'{"userId":"u1","email":"a@b.c"}'
    return (f"POST {IDENTIFY}?org_token={SANDBOX_ORG_TOKEN} HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\n"
            f"Connection: {connection}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order_even_when_delayed(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(latency_ms=50)
    statuses = raw_exchange(sandbox.url, identify_bytes("p1") + identify_bytes("p2") + identify_bytes("p3"), 3)
    assert statuses == ["HTTP/1.1 200 OK"] * 3
    assert [r["idempotency_key"] for r in sandbox.control.received()] == ["p1", "p2", "p3"]


def test_connection_close_is_honoured(sandbox: Sandbox) -> None:
    statuses = raw_exchange(sandbox.url, identify_bytes("c1", "close") + identify_bytes("c2"), 2)
    assert statuses == ["HTTP/1.1 200 OK"]  # the server closed after the first


def test_latency_delays_every_answer(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(latency_ms=200, latency_jitter_ms=50)
    started = time.monotonic()
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_error_rate_answers_500_and_503(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(error_rate=1.0)
    statuses = {post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key=str(n)).status_code for n in range(40)}
    assert statuses == {500, 503}
    assert sandbox.control.count() == 0


def test_a_partial_error_rate_fails_only_a_share(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(error_rate=0.5)
    with requests.Session() as session:
        statuses = [post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key=str(n), session=session).status_code
                    for n in range(200)]
    assert 40 < statuses.count(200) < 160


def test_throttling_answers_429_with_retry_after(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(throttle_rate=1.0, retry_after_s=7)
    response = post(sandbox.url, IDENTIFY, GOOD_IDENTIFY)
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"


def test_the_rate_limit_answers_429_with_the_seconds_until_a_token_once_the_burst_is_spent(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(rate_limit_per_second=0.1, rate_limit_burst=2)  # a token every 10 s, 2 saved up
    with requests.Session() as session:
        started = time.monotonic()
        responses = [post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key=f"r{n}", session=session) for n in range(4)]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200, 429, 429]
    for response in responses[2:]:  # the bucket emptied at most `elapsed` ago: its next token is 10 s after that
        assert math.ceil(10 - elapsed) <= int(response.headers["Retry-After"]) <= 10
    assert [a["outcome"] for a in sandbox.control.attempts()] == [200, 200, 429, 429]
    assert sandbox.control.count() == 2
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="r2").status_code == 429  # straight back: a violation
    assert [v["idempotency_key"] for v in sandbox.control.retry_after_violations()] == ["r2"]


def test_waiting_out_the_rate_limits_retry_after_gets_through(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(rate_limit_per_second=1)  # the burst defaults to one second's worth: 1 token
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="a").status_code == 200
    throttled = post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="b")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    time.sleep(1)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="b").status_code == 200
    assert sandbox.control.retry_after_violations() == []


def test_changing_another_fault_keeps_the_rate_limits_bucket(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(rate_limit_per_second=0.1, rate_limit_burst=1)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="a").status_code == 200
    sandbox.control.set_faults(latency_ms=1)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="b").status_code == 429
    sandbox.control.set_faults(rate_limit_burst=1)  # naming the rate limit starts a full bucket
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="c").status_code == 200


def test_coming_back_before_retry_after_is_a_violation_for_that_key(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(throttle_rate=1.0, retry_after_s=1)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="early").status_code == 429
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="patient").status_code == 429
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="early").status_code == 429  # at once: a violation
    time.sleep(1)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="patient").status_code == 429  # waited: none
    [violation] = sandbox.control.retry_after_violations()
    assert violation["idempotency_key"] == "early" and violation["path"] == IDENTIFY
    assert violation["attempt"] == 2 and violation["retry_after"] == 1 and 0.05 < violation["early_s"] <= 1
    assert sandbox.control.stats()["retry_after_violations"] == 1
    sandbox.control.reset()
    assert sandbox.control.retry_after_violations() == [] and sandbox.control.stats()["retry_after_violations"] == 0


def test_the_retry_after_clock_starts_when_the_delayed_answer_is_sent(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(throttle_rate=1.0, retry_after_s=1, latency_ms=1000)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="k").status_code == 429
    sandbox.control.set_faults(latency_ms=0)
    time.sleep(0.5)
    post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="k")  # 1.5 s after asking, but only 0.5 s after the answer
    assert [v["idempotency_key"] for v in sandbox.control.retry_after_violations()] == ["k"]


def test_a_hanging_request_trips_the_clients_read_timeout(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(hang_rate=1.0)
    with pytest.raises(requests.ReadTimeout):
        requests.post(sandbox.url + IDENTIFY, params={"org_token": SANDBOX_ORG_TOKEN}, json=GOOD_IDENTIFY,
                      timeout=(1, 0.3))
    assert [a["outcome"] for a in sandbox.control.attempts()] == ["hang"]


def test_a_dropped_connection_gets_no_answer(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post(sandbox.url, IDENTIFY, GOOD_IDENTIFY)
    assert [a["outcome"] for a in sandbox.control.attempts()] == ["drop"]


def test_an_outage_answers_503_until_its_window_ends(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(outage_seconds=0.5)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 503
    assert 0 < sandbox.control.faults()["outage_seconds"] <= 0.5
    time.sleep(0.6)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 200


def test_only_naming_outage_seconds_starts_an_outage(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(outage_seconds=0.3)
    time.sleep(0.4)
    sandbox.control.set_faults(error_rate=0.0)  # any other change leaves the ended outage ended
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 200
    assert sandbox.control.faults()["outage_seconds"] == 0.0
    sandbox.control.set_faults(outage_seconds=30)
    sandbox.control.set_faults(latency_ms=1)  # and a running one running
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 503
    sandbox.control.set_faults(outage_seconds=0)  # naming it with 0 ends it
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 200


def test_an_unauthorized_phase_answers_401_until_switched_off(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(unauthorized=True)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 401
    sandbox.control.set_faults(unauthorized=False)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY).status_code == 200


def test_the_strict_rule_rejects_named_events_only(sandbox: Sandbox) -> None:
    sandbox.control.set_faults(reject_event_names=["order_completed"])
    rejected = post(sandbox.url, EVENT, GOOD_ORDER)
    assert rejected.status_code == 400 and rejected.json()["field"] == "eventName"
    assert post(sandbox.url, EVENT, GOOD_VIEW).status_code == 200
    sandbox.control.set_faults(reject_event_names=[])
    assert post(sandbox.url, EVENT, GOOD_ORDER).status_code == 200


@pytest.mark.parametrize("fail_with, expected", [("429", 429), ("401", 401), ("422", 422), ("504", 504)])
def test_fail_first_attempts_answers_each_keys_first_attempts(sandbox: Sandbox, fail_with: str, expected: int) -> None:
    sandbox.control.set_faults(fail_first_attempts=1, fail_with=fail_with)
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="a").status_code == expected
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="b").status_code == expected
    assert post(sandbox.url, IDENTIFY, GOOD_IDENTIFY, key="a").status_code == 200


def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "pipeline.dev.sandbox", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_the_command_serves_with_initial_faults_until_sigterm() -> None:
    process, url = start_cli("--error-rate", "1", env={"WIGZO_ORG_TOKEN": "from-env"})
    try:
        assert url.startswith("http://127.0.0.1:")
        assert post(url, IDENTIFY, GOOD_IDENTIFY, org_token="from-env").status_code in (500, 503)
        requests.post(url + "/_sandbox/faults", json={"error_rate": 0}, timeout=5)
        assert post(url, IDENTIFY, GOOD_IDENTIFY, org_token="from-env").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_command_takes_every_fault_as_a_flag() -> None:
    process, url = start_cli("--latency-ms", "1.5", "--retry-after-s", "3", "--unauthorized",
                             "--reject-event-names", "order_completed, product_view", "--fail-with", "drop",
                             env={"WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN})
    try:
        faults = requests.get(url + "/_sandbox/faults", timeout=5).json()
        flagged = {name: faults[name] for name in ("latency_ms", "retry_after_s", "unauthorized",
                                                   "reject_event_names", "fail_with")}
        assert flagged == {"latency_ms": 1.5, "retry_after_s": 3, "unauthorized": True,
                           "reject_event_names": ["order_completed", "product_view"], "fail_with": "drop"}
        assert {name: faults[name] for name in ("error_rate", "outage_seconds")} == {"error_rate": 0.0,
                                                                                     "outage_seconds": 0.0}
        assert set(faults) == {fault.name for fault in fields(Faults)}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_command_refuses_to_start_without_an_org_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "WIGZO_ORG_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "pipeline.dev.sandbox", "--port", "0"], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 2
    assert "WIGZO_ORG_TOKEN" in result.stderr and "Traceback" not in result.stderr
