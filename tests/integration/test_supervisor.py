"""`run --workers N`: several members in one container, one metrics port for all, crashed members restarted,
signals forwarded, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.samples import SampleStream
from tests.conftest import TopicFactory, wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import (
    everything_committed,
    free_port,
    predicted_requests,
    produce,
    received_requests,
    settings_for,
)

ROOT = Path(__file__).resolve().parents[2]


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--workers", "2", *args], cwd=ROOT,
                            env={**os.environ, **env, "LOG_FORMAT": "text"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _members(supervisor: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(supervisor), "-f", "multiprocessing-fork"], capture_output=True,
                           text=True, check=False)  # not multiprocessing's resource tracker
    return [int(pid) for pid in found.stdout.split()]


def _consumed_total(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "wigzo_pipeline_messages_consumed" for sample in family.samples
               if sample.name.endswith("_total"))


def test_two_members_share_the_topic_and_one_port_reports_them_both(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=6)
    samples = list(SampleStream(seed=41).messages(1500))
    produce(kafka_bootstrap, topic, samples)
    group, port = f"workers-{uuid.uuid4().hex[:8]}", free_port()
    sandbox.control.set_faults(latency_ms=20)  # slow enough for both members to take partitions
    process = _start({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
                      "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN,
                      "METRICS_PORT": str(port)}, "--exit-when-idle", "3")
    consumed = 0.0
    try:
        wait_for(lambda: everything_committed(kafka_bootstrap, group, topic, 6), 120, "everything committed",
                 interval=0.5)
        consumed = _consumed_total(port)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert log.count("pipeline.ops.member: stopped: read") == 2, "both members ran and stopped cleanly"
    assert consumed >= len(samples), "one port sums what every member consumed"
    settings = settings_for(kafka_bootstrap, topic, sandbox.url)
    assert not predicted_requests(settings, topic, samples) - received_requests(sandbox.control.received())


def test_a_killed_member_is_restarted_and_sigterm_drains_every_member(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=4)
    samples = list(SampleStream(seed=43).messages(2000))
    produce(kafka_bootstrap, topic, samples)
    group = f"workers-{uuid.uuid4().hex[:8]}"
    sandbox.control.set_faults(latency_ms=20)
    # the killed member's partitions move once the broker gives up on it: after the broker's minimum session
    # timeout (6 s) rather than librdkafka's default 45 s
    process = _start({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
                      "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN, "METRICS_PORT": "0",
                      "KAFKA_OPT_SESSION_TIMEOUT_MS": "6000", "KAFKA_OPT_HEARTBEAT_INTERVAL_MS": "1000"})
    try:
        wait_for(lambda: sandbox.control.count() >= 300, 60, "300 deliveries", interval=0.1)
        members = _members(process.pid)
        assert len(members) == 2, members
        os.kill(members[0], signal.SIGKILL)
        wait_for(lambda: len(_members(process.pid)) == 2 and members[0] not in _members(process.pid), 30,
                 "the killed member to be replaced")
        assert len(_members(process.pid)) == 2, "the killed member was replaced"
        wait_for(lambda: everything_committed(kafka_bootstrap, group, topic, 4), 180, "everything committed",
                 interval=0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert "restarting it in" in log
    assert everything_committed(kafka_bootstrap, group, topic, 4)
    settings = settings_for(kafka_bootstrap, topic, sandbox.url)
    assert not predicted_requests(settings, topic, samples) - received_requests(sandbox.control.received()), \
        "nothing is lost across the crash"


def test_sighup_reaches_every_member_and_never_ends_one_that_is_starting(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path) -> None:
    topic = make_topic(partitions=4)
    stderr_path = tmp_path / "supervisor.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr, env={**os.environ, "LOG_FORMAT": "text", "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": f"workers-{uuid.uuid4().hex[:8]}",
                                "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN,
                                "METRICS_PORT": "0"})
    try:
        wait_for(lambda: len(_members(process.pid)) == 2, 30, "two members started", interval=0.05)
        starting = _members(process.pid)
        process.send_signal(signal.SIGHUP)  # the members are still importing and building: it must not end them
        wait_for(lambda: stderr_path.read_text().count("pipeline.kafka.pipeline: assigned") >= 2, 60,
                 "both members in the group")
        assert sorted(_members(process.pid)) == sorted(starting), "no member ended and was replaced"
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: stderr_path.read_text().count("settings reload (SIGHUP)") == 2, 30,
                 "each member reloading its settings")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = stderr_path.read_text()
    assert "restarting it in" not in log and log.count("pipeline.ops.member: stopped: read") == 2, log[-3000:]
    assert log.count("SIGHUP: forwarding to every member") == 2
    assert "takes effect only on restart" not in log, "a member reads the settings as its supervisor did"
