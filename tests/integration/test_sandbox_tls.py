"""The sandbox serving HTTPS: WigzoClient verifies its certificate, and delivers only when it trusts the CA."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import trustme

from pipeline.config import Settings
from pipeline.dev.sandbox import SandboxControl, SandboxServer
from pipeline.model import Aborted, Delivered, Secret, WigzoRequest
from pipeline.wigzo.client import WigzoClient
from tests.conftest import wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.test_sandbox import GOOD_IDENTIFY, IDENTIFY, identify_bytes, post, start_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def _tls_server(ca: trustme.CA) -> Iterator[SandboxServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with SandboxServer(org_token=SANDBOX_ORG_TOKEN, ssl_context=context) as server:
        yield server


@pytest.fixture
def tls_sandbox(_tls_server: SandboxServer, ca_pem: str) -> Iterator[Sandbox]:
    control = SandboxControl(_tls_server.url, ca_bundle=ca_pem)
    control.reset()
    yield Sandbox(_tls_server, control)
    control.close()


def client(url: str, ca_bundle: str = "") -> WigzoClient:
    settings = Settings(wigzo_base_url=url, wigzo_org_token=Secret(SANDBOX_ORG_TOKEN), connect_timeout=2.0,
                        read_timeout=5.0, ca_bundle=ca_bundle)
    return WigzoClient(settings)


def identify(key: str) -> WigzoRequest:
    return WigzoRequest("POST", IDENTIFY, (("org_token", SANDBOX_ORG_TOKEN),), GOOD_IDENTIFY,
                        (("Idempotency-Key", key),))


def test_the_sandbox_serves_https_with_the_given_certificate(tls_sandbox: Sandbox) -> None:
    assert tls_sandbox.url.startswith("https://127.0.0.1:")
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(tls_sandbox.url + "/_sandbox/count", timeout=5)
    assert tls_sandbox.control.count() == 0  # the control API, over HTTPS with the CA trusted


def test_a_client_that_does_not_trust_the_ca_delivers_nothing(tls_sandbox: Sandbox,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pipeline.wigzo.client")
    wigzo = client(tls_sandbox.url)
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)  # a certificate failure is transient: retried until stopped
    timer.start()
    try:
        result = wigzo.deliver(identify("untrusted"), stop)
    finally:
        timer.cancel()
        wigzo.close()
    assert isinstance(result, Aborted) and result.attempts >= 1
    assert "SSLError" in caplog.text  # the attempts' label: the certificate was not verified
    assert tls_sandbox.control.attempts() == [] and tls_sandbox.control.count() == 0


def test_a_client_given_the_ca_bundle_delivers(tls_sandbox: Sandbox, ca_pem: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these override a Session's own bundle; the configured WIGZO_CA_BUNDLE must win over them
    unrelated = tmp_path / "unrelated-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(unrelated))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(unrelated))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(unrelated))
    wigzo = client(tls_sandbox.url, ca_bundle=ca_pem)
    stop = threading.Event()
    timer = threading.Timer(10.0, stop.set)  # a failure would be retried forever: end it as Aborted instead
    timer.start()
    try:
        assert wigzo.deliver(identify("trusted"), stop) == Delivered(200, 1)
    finally:
        timer.cancel()
        wigzo.close()
    [record] = tls_sandbox.control.received()
    assert record["idempotency_key"] == "trusted" and record["body"] == GOOD_IDENTIFY


def test_a_client_resetting_a_pipelined_burst_leaves_the_sandbox_quiet(tls_sandbox: Sandbox, ca_pem: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Answers are not written to a connection the client reset: asyncio would log a line for each."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    host, port = tls_sandbox.url.removeprefix("https://").split(":")
    before = tls_sandbox.control.stats()["connections_open"]
    context = ssl.create_default_context(cafile=ca_pem)
    with context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host) as tls:
        tls.sendall(b"".join(identify_bytes(f"burst-{n}") for n in range(2000)))
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    wait_for(lambda: tls_sandbox.control.stats()["connections_open"] == before, 10, "the sandbox to see the reset")
    assert [record.getMessage() for record in caplog.records if record.name == "asyncio"] == []


QUIET_LINE = "connection ended before it was served"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN, as a client that crashed or gave up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _client_hello(host: str, ca_pem: str) -> bytes:
    """The first flight of a real TLS handshake, to leave the sandbox mid-handshake."""
    outgoing = ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=ca_pem).wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=host)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_clients_resetting_at_any_point_cost_a_quiet_line_each_and_no_traceback(
        ca: trustme.CA, ca_pem: str, tmp_path: Path) -> None:
    """asyncio's debug mode (PYTHONASYNCIODEBUG, python -X dev) printed a traceback for every client that reset
    or failed during the TLS handshake; without it asyncio says nothing. Each reset case, in debug mode."""
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    process, url = start_cli("--tls-cert", str(cert_file), "--tls-key", str(key_file),
                             env={"WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN, "PYTHONASYNCIODEBUG": "1"})
    stderr: list[str] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr or ()), daemon=True)
    reader.start()
    host, port = url.removeprefix("https://").split(":")
    control = SandboxControl(url, ca_bundle=ca_pem)
    context = ssl.create_default_context(cafile=ca_pem)
    try:
        # during the TLS handshake: before it starts, halfway through it, and a plain HTTP request instead
        for first_bytes in (b"", _client_hello(host, ca_pem), identify_bytes("plain-http")):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(first_bytes)
            _reset(sock)
        # asyncio's own report of one, which the sandbox replaces, starts with "Error on transport creation"
        wait_for(lambda: sum(QUIET_LINE in line or "Error on transport creation" in line for line in stderr) == 3,
                 10, "the sandbox to report each reset handshake")
        # mid-request body, and mid-response: the request read, its answer delayed
        control.set_faults(latency_ms=2000)
        for key, request in (("mid-body", identify_bytes("mid-body")[:-5]),
                             ("mid-response", identify_bytes("mid-response"))):
            tls = context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=host)
            tls.sendall(request)
            if key == "mid-response":
                wait_for(lambda: [a["idempotency_key"] for a in control.attempts()] == [key], 10, "the request")
            else:
                wait_for(lambda: control.stats()["connections_open"] == 2, 10, "the connection to be served")
            _reset(tls)
            wait_for(lambda: control.stats()["connections_open"] == 1, 10, "the sandbox to see the reset")
    finally:
        control.close()
        process.terminate()
        assert process.wait(timeout=10) == 0
        reader.join(timeout=10)
    assert not [line for line in stderr if "Traceback" in line], "".join(stderr)
    assert sum(QUIET_LINE in line for line in stderr) == 3, "".join(stderr)


def test_the_command_serves_https_with_tls_flags(ca: trustme.CA, ca_pem: str, tmp_path: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    process, url = start_cli("--tls-cert", str(cert_file), "--tls-key", str(key_file),
                             "--rate-limit-per-second", "0.1", "--rate-limit-burst", "1",
                             env={"WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN})
    try:
        assert url.startswith("https://127.0.0.1:")
        with requests.Session() as session:
            session.trust_env = False  # else REQUESTS_CA_BUNDLE would override session.verify
            session.verify = ca_pem
            assert post(url, IDENTIFY, GOOD_IDENTIFY, key="a", session=session).status_code == 200
            assert post(url, IDENTIFY, GOOD_IDENTIFY, key="b", session=session).status_code == 429
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "cert.pem"], "pass both --tls-cert and --tls-key"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.pem"], "cannot serve HTTPS with --tls-cert missing.pem"),
])
def test_the_command_refuses_incomplete_or_unreadable_tls_flags(flags: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.dev.sandbox", "--port", "0", *flags],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN})
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
