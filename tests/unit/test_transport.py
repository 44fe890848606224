"""RequestsTransport without a network: what it hands to requests' adapter, what it returns, how each failure maps.

A scripted HTTPAdapter stands in for urllib3, so everything above the socket (session defaults, environment
proxies and CA bundles, redirects, cookies, exception wrapping) is requests' real code.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from email.message import Message
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from pipeline.wigzo.policy import Verdict, classify_exception
from pipeline.wigzo.transport import (
    USER_AGENT,
    RequestsTransport,
    Response,
    TransportError,
    as_transport_error,
)

URL = "https://wigzo.test/rest/v1/learn/event"
QUERY = (("token", "api"), ("org_token", "org"))
SYSTEM_TRUST = ""  # WIGZO_CA_BUNDLE unset: the system's CA store


def answer(status: int, body: bytes = b"{}", set_cookie: str = "", **headers: str) -> urllib3.HTTPResponse:
    """What urllib3 would hand requests for one HTTP answer."""
    original = None
    if set_cookie:  # requests reads cookies from the http.client response under urllib3's
        message = Message()
        message["Set-Cookie"] = set_cookie
        original = SimpleNamespace(msg=message, isclosed=lambda: True)
        headers["Set-Cookie"] = set_cookie
    return urllib3.HTTPResponse(body=io.BytesIO(body), headers=headers, status=status, preload_content=False,
                                original_response=original)  # type: ignore[arg-type]


class ScriptedAdapter(HTTPAdapter):
    """Answers (or raises) from a script in urllib3's place and remembers each request with its send options."""

    def __init__(self, script: list[urllib3.HTTPResponse | BaseException]) -> None:
        super().__init__()
        self.script: Iterator[urllib3.HTTPResponse | BaseException] = iter(script)
        self.sent: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False,  # type: ignore[override]
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: dict[str, str] | None = None) -> requests.Response:
        self.sent.append({"request": request, "timeout": timeout, "verify": verify, "proxies": proxies})
        step = next(self.script)
        if isinstance(step, BaseException):
            raise step
        return self.build_response(request, step)


def scripted(script: list[urllib3.HTTPResponse | BaseException], ca_bundle: str = SYSTEM_TRUST,
             ) -> tuple[RequestsTransport, ScriptedAdapter]:
    transport = RequestsTransport(8, ca_bundle)
    adapter = ScriptedAdapter(script)
    transport._adapter = adapter
    return transport, adapter


def send(transport: RequestsTransport, url: str = URL, **headers: str) -> Response:
    return transport.send("POST", url, params=QUERY, body=b'{"eventName":"x"}',
                          headers={"Content-Type": "application/json", "Idempotency-Key": "msg-1", **headers},
                          timeout=(3.0, 7.0))


@pytest.fixture(autouse=True)
def no_environment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests reads proxies and CA bundles from the environment: start every test without them."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_the_adapter_pools_as_many_connections_as_it_is_told() -> None:
    adapter = RequestsTransport(48, SYSTEM_TRUST)._adapter
    assert adapter._pool_maxsize == 48  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0


def test_the_call_goes_out_as_given_with_timeouts_user_agent_and_the_default_trust_store() -> None:
    transport, adapter = scripted([answer(200, b'{"ok": true}', **{"Content-Type": "application/json"})])
    response = send(transport)
    [sent] = adapter.sent
    request = sent["request"]
    assert (request.method, request.url) == ("POST", URL + "?token=api&org_token=org")
    assert request.body == b'{"eventName":"x"}' and request.headers["Content-Length"] == "17"
    assert request.headers["Idempotency-Key"] == "msg-1" and request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("segment-wigzo/")
    assert sent["timeout"] == (3.0, 7.0) and sent["verify"] is True and sent["proxies"] == {}
    assert response == Response(200, response.headers, b'{"ok": true}', "utf-8")


def test_a_ca_bundle_replaces_the_default_trust_store() -> None:
    transport, adapter = scripted([answer(200)], ca_bundle="/etc/wigzo-ca.pem")
    send(transport)
    assert adapter.sent[0]["verify"] == "/etc/wigzo-ca.pem"


def test_the_environment_ca_bundle_is_honoured_as_requests_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env/ca.pem")
    transport, adapter = scripted([answer(200)])
    send(transport)
    assert adapter.sent[0]["verify"] == "/env/ca.pem"


def test_proxies_come_from_the_environment_except_for_no_proxy_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "direct.test")
    transport, adapter = scripted([answer(200), answer(200)])
    send(transport)
    send(transport, "https://direct.test/rest/v1/learn/event")
    assert adapter.sent[0]["proxies"]["https"] == "http://proxy.test:3128"
    assert "https" not in adapter.sent[1]["proxies"]


def test_the_environment_is_read_once_per_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The price of not re-reading it on every call: a running consumer's environment does not change."""
    transport, adapter = scripted([answer(200)] * 3)
    send(transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    send(transport)
    send(transport, URL.replace("learn/event", "learn/identify"))
    assert [sent["proxies"].get("https") for sent in adapter.sent] == [None, None, "http://proxy.test:3128"]


def test_a_redirect_is_returned_not_followed() -> None:
    transport, adapter = scripted([answer(302, Location="https://elsewhere.test/"), answer(200)])
    assert send(transport).status == 302
    assert len(adapter.sent) == 1


def test_cookies_are_never_kept() -> None:
    transport, _ = scripted([answer(200, set_cookie="sid=abc; Path=/")])
    send(transport)
    assert len(transport._session.cookies) == 0


def test_retry_after_and_the_declared_charset_reach_the_response() -> None:
    body = "trop de requêtes".encode("latin-1")
    transport, _ = scripted([answer(429, body, **{"Retry-After": "7", "Content-Type": "text/plain; charset=latin-1"})])
    response = send(transport)
    assert response.status == 429 and response.headers.get("retry-after") == "7"
    assert response.text == "trop de requêtes"


@pytest.mark.parametrize("content, encoding, text", [
    (b"caf\xc3\xa9", None, "café"),             # no charset declared: UTF-8
    (b"caf\xe9", "ISO-8859-1", "café"),
    (b"caf\xe9", None, "caf\ufffd"),            # not UTF-8 after all: replaced, never raised
    (b"caf\xc3\xa9", "no-such-charset", "café"),
])
def test_the_body_is_decoded_as_declared_or_as_utf8(content: bytes, encoding: str | None, text: str) -> None:
    assert Response(500, {}, content, encoding).text == text


@pytest.mark.parametrize("exc, verdict", [
    (requests.ConnectTimeout("connect timed out"), Verdict.RETRY),
    (requests.ReadTimeout("read timed out"), Verdict.RETRY),
    (requests.ConnectionError("connection refused"), Verdict.RETRY),
    (requests.exceptions.SSLError("certificate verify failed"), Verdict.RETRY),
    (requests.exceptions.ProxyError("proxy refused"), Verdict.RETRY),
    (requests.exceptions.ChunkedEncodingError("connection broken"), Verdict.RETRY),
    (ConnectionResetError(104, "reset by peer"), Verdict.RETRY),  # a bare OSError from the socket layer
    (socket.timeout("timed out"), Verdict.RETRY),
    (requests.exceptions.InvalidHeader("bad header"), Verdict.PERMANENT),
    (requests.exceptions.InvalidURL("bad url"), Verdict.PERMANENT),
    (requests.exceptions.ContentDecodingError("bad gzip"), Verdict.PERMANENT),
])
def test_network_trouble_is_retried_and_unbuildable_requests_are_not(exc: OSError, verdict: Verdict) -> None:
    transport, _ = scripted([exc])
    with pytest.raises(TransportError) as raised:
        send(transport)
    error = raised.value
    assert error.label == type(exc).__name__ and error.message == str(exc) and error.__cause__ is exc
    assert error.transient is (verdict is Verdict.RETRY)
    assert classify_exception(error) is verdict
    assert as_transport_error(exc).transient is error.transient


def test_a_body_cut_off_midway_is_transient() -> None:
    transport, _ = scripted([answer(200, b"{}", **{"Content-Length": "100"})])
    with pytest.raises(TransportError) as raised:
        send(transport)
    assert raised.value.label == "ChunkedEncodingError" and raised.value.transient


def test_a_url_requests_cannot_build_is_a_permanent_error() -> None:
    with pytest.raises(TransportError) as raised:
        send(RequestsTransport(1, SYSTEM_TRUST), "https://")
    assert raised.value.label == "InvalidURL" and not raised.value.transient


def test_a_header_requests_cannot_send_is_a_permanent_error_and_is_never_sent() -> None:
    transport, adapter = scripted([answer(200)])
    with pytest.raises(TransportError) as raised:
        send(transport, **{"Idempotency-Key": "msg-1\r\nX-Injected: 1"})
    assert raised.value.label == "InvalidHeader" and not raised.value.transient
    assert "header value" in raised.value.message and adapter.sent == []


def test_a_request_beyond_the_pool_opens_a_connection_of_its_own_at_once() -> None:
    """Requests left hanging stop counting against the client's limit, so more than pool_size can be on the
    wire: the pool must hand each one beyond its size a new connection instead of blocking the sender."""
    pool = RequestsTransport(2, SYSTEM_TRUST)._session.get_adapter(URL).poolmanager.connection_from_url(URL)
    connections = [pool._get_conn(timeout=0) for _ in range(3)]  # not connected yet: no network needed
    assert len({id(connection) for connection in connections}) == 3


def test_the_connection_pool_key_is_worked_out_once_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests recomputes it on every call, with a filesystem check of the CA bundle: once per origin is enough."""
    computed: list[str] = []
    original = HTTPAdapter.build_connection_pool_key_attributes

    def counting(self: HTTPAdapter, request: requests.PreparedRequest, verify: bool | str,
                 cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        computed.append(request.url or "")
        return original(self, request, verify, cert)

    monkeypatch.setattr(HTTPAdapter, "build_connection_pool_key_attributes", counting)
    adapter = RequestsTransport(4, SYSTEM_TRUST)._adapter
    for url in (URL, URL + "?x=1", "https://other.test/", URL):
        adapter.build_connection_pool_key_attributes(requests.Request("POST", url).prepare(), "/etc/ca.pem")
    assert computed == [URL, "https://other.test/"]
    host, _ = adapter.build_connection_pool_key_attributes(requests.Request("POST", URL).prepare(), True)
    assert host["host"] == "wigzo.test" and len(computed) == 3, "other TLS settings are another key"
