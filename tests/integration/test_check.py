"""`wigzo-pipeline check` against the real broker and the Wigzo sandbox: each failure names its fix, an
unreachable broker fails fast, and the check changes nothing (no topic created, no event sent)."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.cli import main as cli
from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS
from pipeline.dev.samples import SampleStream
from pipeline.ops.check import KAFKA_TIMEOUT, LIVE_NOTE, TOKEN_NOTE
from tests.conftest import TopicFactory
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import produce

API_TOKEN = "api-token-9b1e77d2"


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the flags each test passes count, whatever the shell running the tests exports."""
    for name in list(os.environ):
        if name in {option.env for option in OPTIONS} or name.startswith(KAFKA_PASSTHROUGH_PREFIX):
            monkeypatch.delenv(name)


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The table as {check: (result, detail)}."""
    table = {}
    for line in out.splitlines()[1:]:
        if not line.strip():
            break
        name, status, detail = re.split(r"\s{2,}", line, maxsplit=2)
        table[name] = (status, detail)
    return table


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli(["check", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


def test_a_good_setup_passes_every_row_and_sends_nothing(
        kafka_bootstrap: str, make_topic: TopicFactory, kafka_admin: AdminClient, sandbox: Sandbox,
        capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(partitions=3)
    group = f"check-{uuid.uuid4().hex[:8]}"
    common = ["--bootstrap-servers", kafka_bootstrap, "--topics", topic, "--group-id", group,
              "--wigzo-base-url", sandbox.url, "--wigzo-org-token", SANDBOX_ORG_TOKEN, "--wigzo-api-token", API_TOKEN]

    code, out = check(capsys, *common)
    table = rows(out)
    assert code == 0, out
    assert {status for status, _ in table.values()} == {"PASS"} and len(table) == 7, out
    assert "no committed offsets" in table["consumer group"][1]
    assert "`run` creates it when it starts" in table["dead-letter topic"][1]
    assert "answered HTTP 404" in table["wigzo base url"][1], "the sandbox has no route at / and still answers"
    assert "All 7 checks passed" in out and TOKEN_NOTE in out
    assert SANDBOX_ORG_TOKEN not in out and API_TOKEN not in out
    assert f"{topic}.dlq" not in kafka_admin.list_topics(timeout=10).topics, "check never creates the DLQ"
    assert sandbox.control.attempts() == [], "check sends no event to Wigzo"

    produce(kafka_bootstrap, topic, SampleStream(seed=3).messages(60))
    ends = {p: high for p, (_, high) in _watermarks(kafka_bootstrap, topic, 3).items()}
    assert ends[0] > 0
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    member.commit(offsets=[TopicPartition(topic, 0, 0), TopicPartition(topic, 1, ends[1])], asynchronous=False)
    member.close()

    code, out = check(capsys, *common)
    assert code == 0, out
    assert f"lag {ends[0]:,} over the 2 of 3 partition(s) with committed offsets" in rows(out)["consumer group"][1]


def test_every_destination_gets_its_own_rows_and_the_report_says_what_is_live(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    topic_a, topic_b = make_topic(partitions=1, prefix="brand-a"), make_topic(partitions=1, prefix="brand-b")
    (tmp_path / "b-token").write_text("brand-b-token\n")
    config = tmp_path / "config.toml"
    config.write_text(f"""
bootstrap_servers = "{kafka_bootstrap}"
group_id = "check-{uuid.uuid4().hex[:8]}"
dlq_topic = "check-destinations-dlq"
wigzo_base_url = "{sandbox.url}"
[destinations.brand_a]
topics = ["{topic_a}"]
wigzo_org_token = "brand-a-token"
consent_categories = ["Advertising"]
[destinations.brand_b]
topics = ["^brand-b-.*"]
wigzo_base_url = "http://127.0.0.1:1"
wigzo_org_token_file = "{tmp_path / 'b-token'}"
""")
    code, out = check(capsys, "--config", str(config))
    table = rows(out)
    assert code == 1, out
    assert table["configuration"][0] == "PASS"
    assert f"2 destinations: brand_a owns {topic_a}; brand_b owns ^brand-b-.*" in table["configuration"][1]
    assert "brand_a: consent required for Advertising" in table["configuration"][1]
    assert topic_b in table["source topics"][1]
    assert table["wigzo base url (brand_a)"][0] == "PASS" and table["org token (brand_a)"][0] == "PASS"
    assert table["wigzo base url (brand_b)"][0] == "FAIL" and "connection to 127.0.0.1:1 refused" in out
    assert table["org token (brand_b)"][0] == "PASS"
    assert LIVE_NOTE in out and "wigzo_org_token" in LIVE_NOTE and "bootstrap_servers" not in LIVE_NOTE
    assert "brand-a-token" not in out and "brand-b-token" not in out


def _watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)}
    finally:
        consumer.close()


def test_an_unreachable_broker_fails_fast_and_names_the_fix(
        sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out = check(capsys, "--bootstrap-servers", "127.0.0.1:1", "--wigzo-base-url", sandbox.url,
                      "--wigzo-org-token", SANDBOX_ORG_TOKEN)
    assert time.monotonic() - started < 10
    table = rows(out)
    assert code == 1
    assert table["kafka"][0] == "FAIL" and "Connection refused" in table["kafka"][1]
    assert [table[name][0] for name in ("source topics", "dead-letter topic", "consumer group")] == ["SKIP"] * 3
    assert table["wigzo base url"][0] == "PASS", "one failure does not hide the checks that do not depend on it"
    assert "Kafka: cannot reach 127.0.0.1:1" in out
    assert "check KAFKA_BOOTSTRAP_SERVERS and that the broker is up" in out


def test_a_broker_address_that_never_answers_fails_within_the_timeout(
        sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # the kernel completes the handshake; nothing ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, out = check(capsys, "--bootstrap-servers", address, "--wigzo-base-url", sandbox.url,
                          "--wigzo-org-token", SANDBOX_ORG_TOKEN)
        assert time.monotonic() - started < 12
    assert code == 1
    assert rows(out)["kafka"] == ("FAIL", f"no answer to a metadata request within {KAFKA_TIMEOUT:g}s")
    assert f"Kafka: cannot reach {address}" in out and "names a Kafka listener" in out


def test_a_missing_topic_fails_and_creates_nothing(
        kafka_bootstrap: str, kafka_admin: AdminClient, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    code, out = check(capsys, "--bootstrap-servers", kafka_bootstrap, "--topics", missing, "--group-id", missing,
                      "--wigzo-base-url", sandbox.url, "--wigzo-org-token", SANDBOX_ORG_TOKEN)
    table = rows(out)
    assert code == 1
    assert table["source topics"][0] == "FAIL" and f"'{missing}' does not exist" in table["source topics"][1]
    assert f"Source topics: '{missing}' does not exist" in out and "create the topic(s) or fix KAFKA_TOPICS" in out
    assert [status for name, (status, _) in table.items() if name != "source topics"] == ["PASS"] * 6, out
    existing = kafka_admin.list_topics(timeout=10).topics
    assert missing not in existing and f"{missing}.dlq" not in existing


@pytest.mark.parametrize(("url", "status", "detail", "fix"), [
    ("http://127.0.0.1:1", "FAIL", "connection to 127.0.0.1:1 refused", "check WIGZO_BASE_URL (host and port)"),
    ("http://wigzo.invalid", "FAIL", "cannot resolve wigzo.invalid", "check WIGZO_BASE_URL and this host's DNS"),
    ("app.wigzo.com", "FAIL", "not a usable URL", "set WIGZO_BASE_URL to an http(s) URL"),
    ("{sandbox}/no/such/path", "PASS", "answered HTTP 404", ""),
])
def test_the_wigzo_base_url_must_answer_and_any_answer_counts(
        url: str, status: str, detail: str, fix: str, kafka_bootstrap: str, make_topic: TopicFactory,
        sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, "--bootstrap-servers", kafka_bootstrap, "--topics", make_topic(partitions=1),
                      "--wigzo-base-url", url.format(sandbox=sandbox.url), "--wigzo-org-token", SANDBOX_ORG_TOKEN)
    result, shown = rows(out)["wigzo base url"]
    assert (result, code) == (status, 0 if status == "PASS" else 1), out
    assert detail in shown
    if fix:
        assert f"Wigzo: {detail}" in out and fix in out


def test_a_missing_org_token_fails_with_where_to_find_it(
        kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, "--bootstrap-servers", kafka_bootstrap, "--topics", make_topic(partitions=1),
                      "--wigzo-base-url", sandbox.url)
    assert code == 1
    assert rows(out)["org token"][0] == "FAIL"
    assert "Org token: WIGZO_ORG_TOKEN is not set" in out and "Settings > Integration" in out


@pytest.mark.parametrize(("args", "named"), [
    (["--max-in-flight", "0"], "--max-in-flight"),
    (["--topics", "^segment-.*"], "set DLQ_TOPIC explicitly"),
    (["--filters", '[{"title": "no debug", "if": "event = ", "actions": [{"type": "DROP"}]}]'],
     "filter 'no debug': its if does not parse at column 9"),
])
def test_invalid_configuration_is_a_failed_row_not_a_traceback(
        args: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, "--bootstrap-servers", "127.0.0.1:1", *args)
    table = rows(out)
    assert code == 1
    assert table["configuration"][0] == "FAIL" and named in table["configuration"][1]
    assert {status for name, (status, _) in table.items() if name != "configuration"} == {"SKIP"}
    assert "Configuration: " in out and named in out.split("to fix:")[1]
