"""Shared fixtures: a real Kafka broker (the project's local one unless KAFKA_BOOTSTRAP_SERVERS is set)
and uniquely named topics that are deleted after each test.

The suite runs in parallel (pytest-xdist): each worker is a session of its own, so the local broker is started
under a file lock by whichever worker needs it first, and stopped once by the controlling process at the end,
when the run started it."""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.dev.local_kafka import LocalKafka, SaslListener, default_home

INTEGRATION_DIR = Path(__file__).parent / "integration"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until `condition` holds; the seconds it took, or an AssertionError naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration talks to real sockets: mark it so `-m "not integration"` is fast."""
    for item in items:
        if INTEGRATION_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


BROKER_RUNNING_AT_START = pytest.StashKey[bool]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remember (in the controlling process only) whether the local broker ran before this run."""
    if not _is_xdist_worker(session.config) and not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        kafka = LocalKafka(default_home())
        session.config.stash[BROKER_RUNNING_AT_START] = kafka.pid() is not None and kafka.answers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the local broker if this run started it: here, after every worker is done with it."""
    if session.config.stash.get(BROKER_RUNNING_AT_START, True):
        return
    kafka = LocalKafka(default_home())
    if kafka.pid() is not None:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker's address; the local broker is started if it does not run (one worker at a time does that)."""
    if external := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return external
    kafka = LocalKafka(default_home())
    kafka.home.mkdir(parents=True, exist_ok=True)
    with open(kafka.home / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return kafka.start()


@pytest.fixture(scope="session")
def kafka_sasl(kafka_bootstrap: str) -> SaslListener:
    """The local broker's SCRAM listener with its development user (created if this broker lacks it)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external Kafka: its SASL listener and users are unknown")
    return LocalKafka(default_home()).ensure_sasl_user()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


TopicFactory = Callable[..., str]


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[TopicFactory]:
    """Create uniquely named topics for one test; all of them (and their `.dlq` twins) go afterwards."""
    created: list[str] = []

    def create(partitions: int = 6, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                            operation_timeout=30)
        futures[name].result(timeout=35)
        created.append(name)
        # the broker's metadata may show a new topic a moment after the controller created it (KRaft)
        wait_for(lambda: len(kafka_admin.list_topics(name, timeout=10).topics[name].partitions) == partitions, 30,
                 f"topic {name} to be described with its {partitions} partitions")
        return name

    yield create
    existing = set(kafka_admin.list_topics(timeout=10).topics)
    doomed = [t for name in created for t in (name, f"{name}.dlq") if t in existing]
    if doomed:
        for future in kafka_admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(timeout=30)
