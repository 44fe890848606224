"""The chaos suite's fixtures: its scale (short by default, long with CHAOS_LONG=1), fresh Wigzo sandboxes that
know the suite's tokens, and the pipeline processes of one test, all killed when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Members, Scale, Wigzo, start_wigzo

CHAOS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every chaos scenario runs real brokers, sandboxes and pipeline processes: mark them `integration` as
    tests/conftest.py marks tests/integration, so `-m "not integration"` stays fast, and `chaos`, so
    `-m "not chaos"` leaves them out. (This hook sees the whole session's items.)"""
    for item in items:
        if CHAOS_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def scale() -> Scale:
    return Scale.from_env()


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    """The test's pipeline processes; whatever still runs at the end is killed, pass or fail."""
    started = Members(tmp_path / "logs")
    try:
        yield started
    finally:
        started.kill_all()


WigzoFactory = Callable[..., Wigzo]


@pytest.fixture
def wigzo() -> Iterator[WigzoFactory]:
    """Start fresh sandboxes (their counts and audits are the test's alone); all are stopped afterwards."""
    started: list[Wigzo] = []

    def start(**kwargs: Any) -> Wigzo:
        started.append(start_wigzo(**kwargs))
        return started[-1]

    yield start
    for sandbox in started:
        sandbox.control.close()
        sandbox.server.stop()
