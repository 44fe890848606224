"""The Wigzo sandbox for integration tests: one server per session, forgotten and fault-free for each test. A real
Confluent-compatible schema registry: one per session, and one of a test's own that it may stop and start."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.dev.local_registry import LocalRegistry, default_home
from pipeline.dev.sandbox import SandboxControl, SandboxServer
from tests.integration.pipeline_harness import free_port

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


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Apicurio on a free port for this worker's session, schemas in memory; built with Maven on first use."""
    registry = LocalRegistry(default_home(), port=free_port(), run_dir=tmp_path_factory.mktemp("registry"))
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture
def stoppable_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry of the test's own, started, that it may `stop()` and `start()` again. Its schemas are kept in
    files, so they come back with their ids as Confluent's do (it keeps them in Kafka); Apicurio's in-memory
    storage would come back empty and answer "not found" for ids already in Kafka."""
    registry = LocalRegistry(default_home(), port=free_port(), run_dir=tmp_path, keep_schemas=True)
    registry.start()
    yield registry
    registry.stop()
