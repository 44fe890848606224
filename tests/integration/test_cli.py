"""Operator commands through the real console entry point: reset-offsets, replay --dry-run, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.cli import main as cli
from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import SandboxControl, SandboxServer
from tests.conftest import TopicFactory, wait_for
from tests.integration.pipeline_harness import ORG_TOKEN, committed_offsets, produce

ROOT = Path(__file__).resolve().parents[2]


def _commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def test_reset_offsets_dry_run_then_apply_and_refuse_while_active(
        kafka_bootstrap: str, make_topic: TopicFactory, capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(partitions=2)
    produce(kafka_bootstrap, topic, SampleStream(seed=1).messages(100))
    group = f"reset-{uuid.uuid4().hex[:8]}"
    _commit(kafka_bootstrap, group, topic, {0: 5, 1: 7})
    common = ["--bootstrap-servers", kafka_bootstrap, "--topics", topic, "--group-id", group]

    assert cli(["reset-offsets", *common, "--to-earliest", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "before" in table and "after" in table and "dry run" in table
    assert committed_offsets(kafka_bootstrap, group, topic, 2) == [5, 7]

    assert cli(["reset-offsets", *common, "--to-offset", "3"]) == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 2) == [3, 3]

    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    member.subscribe([topic])
    deadline = time.monotonic() + 30
    while not member.assignment() and time.monotonic() < deadline:
        member.poll(0.2)
    try:
        assert cli(["reset-offsets", *common, "--to-latest"]) == 2
        assert "active member" in capsys.readouterr().err
    finally:
        member.close()


def test_replay_dry_run_prints_counts_per_partition(
        kafka_bootstrap: str, make_topic: TopicFactory, capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(partitions=3)
    produce(kafka_bootstrap, topic, SampleStream(seed=1).messages(90))
    assert cli(["replay", "--bootstrap-servers", kafka_bootstrap, "--topics", topic, "--wigzo-org-token", "x",
                "--offsets", "0:0-5,2:1-3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and out.rstrip().endswith("7")


def test_run_without_org_token_says_how_to_fix(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WIGZO_ORG_TOKEN", raising=False)
    assert cli(["run", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "WIGZO_ORG_TOKEN is not set" in capsys.readouterr().err


def test_second_signal_exits_at_once_without_committing(kafka_bootstrap: str, make_topic: TopicFactory,
                                                        tmp_path: Path) -> None:
    topic = make_topic(partitions=1)
    produce(kafka_bootstrap, topic, SampleStream(seed=1).messages(50))
    group = f"signals-{uuid.uuid4().hex[:8]}"
    with SandboxServer(org_token=ORG_TOKEN) as server:
        control = SandboxControl(server.url)
        control.set_faults(hang_rate=1.0)  # requests hang: the first signal's drain waits for the read timeout
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic,
               "KAFKA_GROUP_ID": group, "WIGZO_BASE_URL": server.url, "WIGZO_ORG_TOKEN": ORG_TOKEN,
               "WIGZO_READ_TIMEOUT": "60", "METRICS_PORT": "0"}  # a fixed port would collide with other runs
        log = tmp_path / "run.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"], env=env, cwd=ROOT,
                                       stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not control.attempts() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert control.attempts(), log.read_text()
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining in-flight deliveries" in log.read_text(), 30, "the first signal to start the drain")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
        assert process.returncode == 128 + signal.SIGTERM, log.read_text()[-2000:]
        assert control.count() == 0
    assert committed_offsets(kafka_bootstrap, group, topic, 1) == [-1001], "nothing was finished, nothing committed"
