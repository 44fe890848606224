"""Settings that change without a restart, and several Wigzo destinations in one group, on the real broker and
sandbox: a token rotated in its file while events flow (with and without SIGHUP), an event-name map changed on
disk, an invalid config file, and two destinations each with its own token, one of them rejected."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from pipeline.config import Settings, SettingsSource
from pipeline.dev.samples import SampleMessage
from pipeline.kafka.assignment import GroupSubscription
from pipeline.kafka.dead_letter_headers import error_headers
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.runner import build_pipeline, run_pipeline
from tests.conftest import TopicFactory, wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import everything_committed, free_port, produce, read_all

ROOT = Path(__file__).resolve().parents[2]
ROTATED_TOKEN = "org-token-r0tat3d"


def signed_up(prefix: str, n: int) -> SampleMessage:
    """A valid track event that maps to one request, its Idempotency-Key `prefix-n`."""
    user = f"user-{n % 20:02d}"
    event = {"type": "track", "event": "Signed Up", "messageId": f"{prefix}-{n}", "userId": user,
             "timestamp": "2026-11-01T10:00:00.000Z", "properties": {"plan": "plus"}}
    return SampleMessage(user.encode(), orjson.dumps(event), "signed-up")


def write_atomically(path: Path, text: str) -> None:
    """As an orchestrator updates a mounted file: the new content appears whole."""
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    staged.write_text(text)
    staged.replace(path)


def accepted(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    """The sandbox's accepted requests by Idempotency-Key (the first acceptance of each)."""
    found: dict[str, dict[str, Any]] = {}
    for record in sandbox.control.received():
        found.setdefault(record["idempotency_key"], record)
    return found


class Feeder(threading.Thread):
    """Produces a `signed_up` event every `every` seconds until stopped: events keep flowing."""

    def __init__(self, bootstrap: str, topic: str, prefix: str, every: float = 0.02) -> None:
        super().__init__(name="live-feeder", daemon=True)
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self._topic, self._prefix, self._every = topic, prefix, every
        self._done = threading.Event()
        self.keys: list[str] = []

    def run(self) -> None:
        n = 0
        while not self._done.wait(self._every):
            sample = signed_up(self._prefix, n)
            self._producer.produce(self._topic, key=sample.key, value=sample.value)
            self._producer.poll(0)
            self.keys.append(f"{self._prefix}-{n}")
            n += 1

    def finish(self) -> list[str]:
        """Stop producing (again is harmless); every key produced."""
        self._done.set()
        if self.ident is not None:
            self.join(timeout=10)
        assert self._producer.flush(30) == 0
        return list(self.keys)


# ---- a real member: a token rotated in its file ------------------------------------------------------------


def _member_environment(**settings: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith(("WIGZO_", "KAFKA_")) and name != "METRICS_PORT"}
    return {**inherited, "LOG_FORMAT": "json", **settings}


def _readyz(port: int) -> tuple[int, list[str]]:
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except requests.ConnectionError:
        return 0, []
    return answer.status_code, answer.json()["reasons"]


def _member_ids(admin: AdminClient, group: str) -> list[str]:
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    return sorted(member.member_id for member in description.members)


ROTATIONS = {
    # Wigzo refuses the old token first (the member pauses), then the file is rewritten: the next probe reads
    # the file again, or the watcher sees it, whichever comes first
    "paused, no signal": (True, False),
    "paused, SIGHUP": (True, True),
    # Wigzo takes both tokens for a while and the file is rewritten: only the watcher can tell
    "both valid, no signal": (False, False),
}


@pytest.mark.parametrize("rotation", list(ROTATIONS))
def test_a_token_rotated_in_its_file_while_events_flow_recovers_without_a_restart(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, kafka_admin: AdminClient,
        tmp_path: Path, rotation: str) -> None:
    """A token rotated in Wigzo and in the Secret's file while events flow: the member sends the new one without a
    restart, dead-letters nothing, loses nothing and never rebalances."""
    paused, sighup = ROTATIONS[rotation]
    topic = make_topic(partitions=3)
    group, port = f"live-{uuid.uuid4().hex[:8]}", free_port()
    token_file = tmp_path / "org-token"
    token_file.write_text(SANDBOX_ORG_TOKEN + "\n")
    stderr_path = tmp_path / "member.stderr"
    with open(stderr_path, "wb") as stderr:
        member = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
            env=_member_environment(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPICS=topic,
                                    KAFKA_GROUP_ID=group, WIGZO_BASE_URL=sandbox.url, METRICS_PORT=str(port),
                                    WIGZO_ORG_TOKEN_FILE=str(token_file), WIGZO_MAX_IN_FLIGHT="16",
                                    WIGZO_CONNECT_TIMEOUT="2", WIGZO_READ_TIMEOUT="5"))
    feeder = Feeder(kafka_bootstrap, topic, f"rot-{uuid.uuid4().hex[:6]}")
    try:
        wait_for(lambda: _readyz(port)[0] == 200, 60, "the member to be ready")
        feeder.start()
        wait_for(lambda: len(accepted(sandbox)) >= 50, 60, "deliveries with the first token")
        members_before = _member_ids(kafka_admin, group)

        if paused:
            sandbox.control.set_org_tokens(ROTATED_TOKEN)  # rotated in Wigzo: the old token is refused from now on
            wait_for(lambda: any("auth_failed" in reason for reason in _readyz(port)[1]), 30,
                     "the member to pause, the token rejected and its file unchanged")
        else:
            sandbox.control.set_org_tokens(SANDBOX_ORG_TOKEN, ROTATED_TOKEN)
        rewritten = time.time()
        write_atomically(token_file, ROTATED_TOKEN + "\n")
        if sighup:
            member.send_signal(signal.SIGHUP)
        wait_for(lambda: any(r["org_token"] == ROTATED_TOKEN for r in sandbox.control.received()), 30,
                 "a request accepted with the rotated token")
        first = min(r["received_at"] for r in sandbox.control.received() if r["org_token"] == ROTATED_TOKEN)
        sandbox.control.set_org_tokens(ROTATED_TOKEN)  # the old token retired
        wait_for(lambda: _readyz(port)[0] == 200, 30, "the member to be ready again")

        time.sleep(0.5)  # events keep flowing with the new token for a moment
        keys = feeder.finish()
        wait_for(lambda: everything_committed(kafka_bootstrap, group, topic, 3), 120, "the topic to be drained",
                 interval=0.5)
        members_after = _member_ids(kafka_admin, group)
        member.send_signal(signal.SIGTERM)
        assert member.wait(timeout=60) == 0
    finally:
        feeder.finish()
        if member.poll() is None:
            member.kill()
            member.wait()
    log = [orjson.loads(line)["msg"] for line in stderr_path.read_text().splitlines() if line.strip()]
    messages = log[:next(n for n, message in enumerate(log) if message.startswith("signal 15"))]  # before SIGTERM
    delivered = accepted(sandbox)
    assert [key for key in keys if key not in delivered] == [], "missing: produced, never accepted"
    assert read_all(kafka_bootstrap, f"{topic}.dlq") == [], "nothing dead-lettered"
    assert members_before == members_after and len(members_before) == 1, "the same member throughout"
    assert sum(m.startswith("assigned ") for m in messages) == 1 and not any(
        m.startswith(("revoking ", "lost ")) for m in messages), "no rebalance"
    assert any("settings reloaded" in m and "wigzo_org_token" in m for m in messages), messages[-20:]
    assert ROTATED_TOKEN not in stderr_path.read_text() and SANDBOX_ORG_TOKEN not in stderr_path.read_text()
    assert not any("auth_failed" in m or "token was rejected" in m for m in messages) or paused
    recovery = first - rewritten
    print(f"\n{rotation}: {recovery:.2f} s from rewriting the token file to the first request accepted with the "
          f"new token; {len(keys)} events, {len(delivered)} accepted")
    assert recovery < (2.0 if sighup else 10.0), "noticed within 10 s without a signal"


# ---- in-process members reading a config file ------------------------------------------------------------


class Member:
    """A member built as `run` builds it (settings from `config`, live), run on a thread of its own."""

    def __init__(self, config: Path) -> None:
        self.source = SettingsSource(argparse.Namespace(config=str(config)))
        self.settings = self.source.load()
        self.pipeline: Pipeline = build_pipeline(
            self.settings, GroupSubscription(self.settings.topics, self.settings.dlq_topic), live=self.source)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-member", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            run_pipeline(self.pipeline, self.settings)
        except BaseException as exc:  # noqa: BLE001 - raised again by stop(), on the test's thread
            self.error = exc

    @property
    def generation(self) -> int:
        live = self.pipeline.live
        assert live is not None
        return live.generation  # type: ignore[attr-defined,no-any-return]

    def stop(self) -> None:
        self.pipeline.request_shutdown()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the member did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Member]]:
    """Members whose settings come from their config file alone; all are stopped at the end."""
    for name in [name for name in os.environ if name.startswith(("WIGZO_", "KAFKA_"))]:
        monkeypatch.delenv(name)
    started: list[Member] = []
    yield started
    for member in started:
        if member._thread.is_alive():
            member.pipeline.request_shutdown()
            member._thread.join(timeout=60)


def _config(kafka_bootstrap: str, sandbox: Sandbox, **top: str) -> str:
    lines = [f'bootstrap_servers = "{kafka_bootstrap}"', f'group_id = "live-{uuid.uuid4().hex[:8]}"',
             f'wigzo_base_url = "{sandbox.url}"', "max_in_flight = 16", "connect_timeout = 2", "read_timeout = 5",
             *(f"{key} = {value}" for key, value in top.items())]
    return "\n".join(lines) + "\n"


def _reloads(result: str) -> float:
    return REGISTRY.get_sample_value("wigzo_pipeline_config_reloads_total", {"result": result}) or 0.0


def test_an_event_name_map_changed_on_disk_applies_to_the_next_events_read(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path,
        members: list[Member]) -> None:
    topic = make_topic(partitions=2)
    event_map = tmp_path / "event-map.json"
    event_map.write_text('{"Signed Up": "signup"}')
    (tmp_path / "token").write_text(SANDBOX_ORG_TOKEN)
    config = tmp_path / "config.toml"
    config.write_text(_config(kafka_bootstrap, sandbox, topics=f'["{topic}"]', event_name_map=f'"{event_map}"',
                              wigzo_org_token_file=f'"{tmp_path / "token"}"'))
    members.append(member := Member(config))
    produce(kafka_bootstrap, topic, [signed_up("before", n) for n in range(40)])
    wait_for(lambda: len(accepted(sandbox)) == 40, 60, "the first events delivered with the first map")

    write_atomically(event_map, '{"Signed Up": "registered"}')  # no signal: the watcher notices
    wait_for(lambda: member.generation == 1, 15, "the reload")
    produce(kafka_bootstrap, topic, [signed_up("after", n) for n in range(40)])
    wait_for(lambda: len(accepted(sandbox)) == 80, 60, "the next events delivered")
    member.stop()
    names = {key.split("-")[0]: set() for key in ("before", "after")}
    for key, record in accepted(sandbox).items():
        names[key.split("-")[0]].add(record["body"]["eventName"])
    assert names == {"before": {"signup"}, "after": {"registered"}}


def test_an_invalid_config_file_is_rejected_and_the_running_settings_keep_delivering(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path,
        members: list[Member], caplog: pytest.LogCaptureFixture) -> None:
    topic = make_topic(partitions=2)
    config = tmp_path / "config.toml"
    valid = _config(kafka_bootstrap, sandbox, topics=f'["{topic}"]', wigzo_org_token=f'"{SANDBOX_ORG_TOKEN}"',
                    event_name_map="'{\"Signed Up\": \"signup\"}'")
    config.write_text(valid)
    members.append(member := Member(config))
    rejected = _reloads("rejected")
    with caplog.at_level("ERROR", logger="pipeline.live"):
        write_atomically(config, valid.replace("max_in_flight = 16", "max_in_flight = 0"))
        wait_for(lambda: _reloads("rejected") == rejected + 1, 15, "the invalid file to be rejected")
    produce(kafka_bootstrap, topic, [signed_up("kept", n) for n in range(60)])
    wait_for(lambda: len(accepted(sandbox)) == 60, 60, "events delivered with the running settings")
    member.stop()
    assert member.generation == 0
    assert {record["body"]["eventName"] for record in accepted(sandbox).values()} == {"signup"}
    (error,) = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert f"{config}: max_in_flight='0' is invalid" in error and "the running settings stay" in error
    assert read_all(kafka_bootstrap, f"{topic}.dlq") == []


def test_two_destinations_in_one_group_deliver_with_their_own_tokens_and_one_401_does_not_stop_the_other(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path,
        members: list[Member]) -> None:
    topic_a, topic_b = make_topic(partitions=2, prefix="brand-a"), make_topic(partitions=2, prefix="brand-b")
    (tmp_path / "a-token").write_text("brand-a-token\n")
    (tmp_path / "b-token").write_text("brand-b-token\n")
    sandbox.control.set_org_tokens("brand-a-token", "brand-b-token")  # one sandbox, two organizations
    config = tmp_path / "config.toml"
    config.write_text(_config(kafka_bootstrap, sandbox) + f"""
[destinations.brand_a]
topics = ["{topic_a}"]
wigzo_org_token_file = "{tmp_path / 'a-token'}"

[destinations.brand_b]
topics = ["{topic_b}"]
wigzo_org_token_file = "{tmp_path / 'b-token'}"
""")
    members.append(member := Member(config))
    garbage = SampleMessage(b"g", b"not json", "garbage")
    produce(kafka_bootstrap, topic_a, [*(signed_up("a1", n) for n in range(30)), garbage])
    produce(kafka_bootstrap, topic_b, [*(signed_up("b1", n) for n in range(30)), garbage])
    wait_for(lambda: len(accepted(sandbox)) == 60, 60, "both destinations delivered")
    assert {key.split("-")[0]: record["org_token"] for key, record in accepted(sandbox).items()} == {
        "a1": "brand-a-token", "b1": "brand-b-token"}

    sandbox.control.set_org_tokens("brand-a-token")  # brand_b's token is rejected from now on
    produce(kafka_bootstrap, topic_b, [signed_up("b2", n) for n in range(30)])
    wait_for(lambda: any("Wigzo (brand_b): auth_failed" in reason for reason in member.pipeline.status.readiness()),
             30, "brand_b to pause, named in the readiness reasons")
    produce(kafka_bootstrap, topic_a, [signed_up("a2", n) for n in range(30)])
    wait_for(lambda: sum(key.startswith("a2-") for key in accepted(sandbox)) == 30, 60,
             "brand_a delivering while brand_b is paused")
    assert not any(reason.startswith("Wigzo (brand_a)") for reason in member.pipeline.status.readiness())
    assert not any(key.startswith("b2-") for key in accepted(sandbox))

    sandbox.control.set_org_tokens("brand-a-token", "brand-b-token")  # fixed in Wigzo
    wait_for(lambda: sum(key.startswith("b2-") for key in accepted(sandbox)) == 30, 60, "brand_b resuming")
    member.stop()
    for topic, name in ((topic_a, "brand_a"), (topic_b, "brand_b")):
        (letter,) = read_all(kafka_bootstrap, f"{topic}.dlq")  # the garbage only: nothing failed for the 401
        assert error_headers(letter.headers())["destination"] == name
