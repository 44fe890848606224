"""The local schema registry is built once: a second start needs no Maven and reuses the running registry, and a
port another registry holds is refused with what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.dev.local_registry import LocalRegistry, LocalRegistryError


def test_second_start_needs_no_maven_and_reuses_the_running_registry(
        schema_registry: LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = schema_registry.pid()
    assert pid is not None
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no Maven, so any build attempt would fail
    assert schema_registry.build.install() is False
    assert schema_registry.start() == schema_registry.url
    assert schema_registry.pid() == pid


def test_a_second_registry_refuses_the_port_the_first_holds(schema_registry: LocalRegistry, tmp_path: Path) -> None:
    with pytest.raises(LocalRegistryError, match="another schema registry already listens on port"):
        LocalRegistry(schema_registry.home, port=schema_registry.port, run_dir=tmp_path).start()
