"""The Wigzo sandbox for integration tests: one server per session, forgotten and fault-free for each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipeline.dev.sandbox import SandboxControl, SandboxServer

SANDBOX_ORG_TOKEN = "org-token-s3cr3t"


@dataclass(frozen=True, slots=True)
class Sandbox:
    server: SandboxServer
    control: SandboxControl

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[SandboxServer]:
    server = SandboxServer(org_token=SANDBOX_ORG_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(_sandbox_server: SandboxServer) -> Iterator[Sandbox]:
    control = SandboxControl(_sandbox_server.url)
    control.reset()
    yield Sandbox(_sandbox_server, control)
    control.reset()  # a hang fault left on would hold later tests' connections
    control.close()
