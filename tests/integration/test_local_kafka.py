"""Provisioning is idempotent: a second start needs no download and no new broker. The SASL listener
authenticates its development user, and only with the right password."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from pipeline.dev import local_kafka
from pipeline.dev.local_kafka import LocalKafka, LocalKafkaError, SaslListener, default_home, default_port


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="an external Kafka is in use")
def test_second_start_needs_no_maven_and_reuses_the_running_broker(
        kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = LocalKafka(default_home())
    pid = kafka.pid()
    assert pid is not None
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no Maven, so any download attempt would fail
    assert kafka.files.install() is False
    assert kafka.start() == kafka_bootstrap
    assert kafka.pid() == pid


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="an external Kafka is in use")
def test_a_second_home_refuses_the_port_the_first_broker_holds(kafka_bootstrap: str, tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError, match="another Kafka already listens"):
        LocalKafka(tmp_path).start()


def test_the_sasl_listener_accepts_the_development_user_again_after_a_second_ensure(
        kafka_sasl: SaslListener) -> None:
    kafka = LocalKafka(default_home())
    assert kafka.ensure_sasl_user() == kafka_sasl
    assert kafka.sasl_answers()


def test_the_sasl_listener_refuses_a_wrong_password(kafka_sasl: SaslListener) -> None:
    errors: list[KafkaError] = []
    wrong = {**kafka_sasl.client_config(), "sasl.password": "not-the-development-password", "log_level": 0,
             "error_cb": errors.append}
    producer = Producer(wrong)
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors


def test_status_reports_the_sasl_listener_without_its_password(
        kafka_sasl: SaslListener, capsys: pytest.CaptureFixture[str]) -> None:
    assert local_kafka.main(argparse.Namespace(action="status")) == 0
    out = capsys.readouterr().out
    assert f"SASL_PLAINTEXT with {kafka_sasl.mechanism} at {kafka_sasl.bootstrap}, user {kafka_sasl.username}" in out
    assert kafka_sasl.password.reveal() not in out


@pytest.mark.parametrize("text", ["19092x", "80", "65535"])
def test_an_unusable_development_port_is_refused_with_the_fix(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIGZO_KAFKA_PORT", text)
    with pytest.raises(LocalKafkaError, match="WIGZO_KAFKA_PORT=.* is invalid: give a free port"):
        default_port()


def test_a_development_port_moves_all_three_listeners(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WIGZO_KAFKA_PORT", "29092")
    kafka = LocalKafka(tmp_path)
    config = kafka.files.write_config(kafka.port).read_text()
    assert "\nlisteners=PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093," \
           "SASL_PLAINTEXT://127.0.0.1:29094\n" in config
    assert "\nadvertised.listeners=PLAINTEXT://127.0.0.1:29092,SASL_PLAINTEXT://127.0.0.1:29094\n" in config
    assert (kafka.bootstrap, kafka.sasl.bootstrap) == ("127.0.0.1:29092", "127.0.0.1:29094")
