"""Provisioning is idempotent: a second start needs no download and no new broker."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.dev.local_kafka import LocalKafka, LocalKafkaError, default_home


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="an external Kafka is in use")
def test_second_start_needs_no_maven_and_reuses_the_running_broker(
        kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = LocalKafka(default_home())
    pid = kafka.pid()
    assert pid is not None
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no Maven, so any download attempt would fail
    assert kafka.install() is False
    assert kafka.start() == kafka_bootstrap
    assert kafka.pid() == pid


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="an external Kafka is in use")
def test_a_second_home_refuses_the_port_the_first_broker_holds(kafka_bootstrap: str, tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="another Kafka already listens"):
        LocalKafka(tmp_path).start()
