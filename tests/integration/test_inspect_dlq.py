"""`wigzo-pipeline dlq summary|show` over the dead letters a real pipeline run wrote: the counts match what is in
the topic, letters show their context, and no token ever appears, even one carried inside a payload."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.cli import main as cli
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.kafka.dead_letter_headers import error_headers
from pipeline.model import Secret
from tests.conftest import TopicFactory
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import live_pipeline, produce, read_all, run_until, settings_for

API_TOKEN = "api-token-5f0c2a91"
# dead-lettered at `validate` (no userId or anonymousId), carrying both tokens in its payload
LEAKY = SampleMessage(b"leaky", f'{{"type": "track", "event": "Signed Up", "messageId": "m-leak", "properties": '
                                f'{{"org": "{SANDBOX_ORG_TOKEN}", "api": "{API_TOKEN}"}}}}'.encode(), "invalid:leaky")


@dataclass(frozen=True, slots=True)
class Letters:
    bootstrap: str
    topic: str
    letters: list[Message]

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> str:
        assert cli(["dlq", *args, "--bootstrap-servers", self.bootstrap, "--topics", self.topic,
                    "--wigzo-org-token", SANDBOX_ORG_TOKEN, "--wigzo-api-token", API_TOKEN]) == 0
        out = capsys.readouterr().out
        assert SANDBOX_ORG_TOKEN not in out and API_TOKEN not in out
        return out


@pytest.fixture
def letters(kafka_bootstrap: str, make_topic: TopicFactory, sandbox: Sandbox) -> Iterator[Letters]:
    """A pipeline run over a mixed sample stream (with LEAKY among it), and the dead letters it wrote: Wigzo
    answers 400 to `removedfromcart` (Product Removed, rare enough not to look systemic), so some fail delivery."""
    sandbox.control.set_faults(reject_event_names=["removedfromcart"])
    topic = make_topic(partitions=3)
    samples = [*SampleStream(seed=5).messages(800), LEAKY]
    produce(kafka_bootstrap, topic, samples)
    settings = dataclasses.replace(settings_for(kafka_bootstrap, topic, sandbox.url),
                                   wigzo_org_token=Secret(SANDBOX_ORG_TOKEN), wigzo_api_token=Secret(API_TOKEN))
    pipeline = live_pipeline(settings)
    status = pipeline.status
    run_until(pipeline, settings, lambda: status.stats.read >= len(samples) and status.outstanding() == 0)
    yield Letters(kafka_bootstrap, topic, read_all(kafka_bootstrap, settings.dlq_topic_for(topic)))


def section(out: str, title: str) -> dict[str, int]:
    """One `by ...` block of the summary as {key: count}."""
    block = out.split(f"\nby {title}\n", 1)[1].split("\n\n", 1)[0]
    return {key: int(count.replace(",", "")) for key, count in
            (re.split(r"\s{2,}", line.strip()) for line in block.splitlines())}


def test_summary_counts_match_the_dead_letters_in_the_topic(
        letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    contexts = [error_headers(letter.headers()) for letter in letters.letters]
    assert len(contexts) > 10

    out = letters.cli(capsys, "summary")

    assert f"{letters.topic}.dlq: {len(contexts):,} letter(s) in 3 partition(s)" in out
    by_stage = section(out, "stage")
    assert by_stage == {stage: Counter(c["stage"] for c in contexts)[stage]
                        for stage in ("decode", "validate", "mapping", "delivery")}
    assert by_stage["validate"] >= 3 and by_stage["decode"] >= 1 and by_stage["delivery"] >= 1
    assert section(out, "destination") == {"default": len(contexts)}, "one destination unless configured"
    assert section(out, "error class") == Counter(c["class"] for c in contexts)
    statuses = section(out, "HTTP status")
    assert statuses["400"] == by_stage["delivery"]
    assert statuses == Counter(c.get("http.status", "none (no HTTP answer)") for c in contexts)
    oldest = min(c["first.failure"] for c in contexts)
    newest = max(c["last.failure"] for c in contexts)
    assert f"oldest first failure  {oldest}" in out and f"newest last failure   {newest}" in out
    per_source = Counter((c["topic"], c["partition"]) for c in contexts)
    for (topic, partition), count in per_source.items():
        assert re.search(rf"^  {re.escape(topic)}\s+{partition}\s+{count}$", out, re.MULTILINE), out
    assert letters.cli(capsys, "summary", "--dlq-topic", f"{letters.topic}.dlq") == out, "the same topic, named"


def test_show_prints_the_chosen_letters_with_their_context(
        letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    out = letters.cli(capsys, "show", "--stage", "validate", "--limit", "3")

    shown = out.split("\n── ")[1:]
    assert len(shown) == 3, out
    for block in shown:
        assert re.match(rf"{re.escape(letters.topic)}\.dlq partition \d, offset \d+\n", block), block
        assert re.search(rf"^  source\s+{re.escape(letters.topic)} partition \d, offset \d+$", block, re.MULTILINE)
        for name in ("stage", "class", "message", "attempts", "first.failure", "last.failure", "service.version"):
            assert re.search(rf"^  {re.escape(name)}\s+\S", block, re.MULTILINE), (name, block)
        assert re.search(r"^  stage\s+validate$", block, re.MULTILINE)
        assert re.search(r"^  payload\s+.+ \(\d+ bytes\)$", block, re.MULTILINE)
    assert "stopped at --limit 3" in out


def test_show_redacts_tokens_inside_payloads(letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    assert any(LEAKY.value == letter.value() for letter in letters.letters), "the leaky event was dead-lettered"

    out = letters.cli(capsys, "show", "--error-class", "MissingIdentity", "--limit", "1000")

    assert '"org": "***", "api": "***"' in out  # and `cli` asserts neither token appears


def test_show_escapes_bytes_that_are_not_printable(letters: Letters, capsys: pytest.CaptureFixture[str]) -> None:
    decode = [letter for letter in letters.letters if error_headers(letter.headers())["stage"] == "decode"]
    assert any(not letter.value().decode("utf-8", "replace").isprintable() for letter in decode)

    out = letters.cli(capsys, "show", "--stage", "decode", "--limit", "1000")

    assert out.count("\n── ") == len(decode)
    assert all(line.isprintable() for line in out.splitlines()), "no raw control bytes reach the terminal"
    assert "\\x" in out


def test_a_missing_dead_letter_topic_is_a_clear_error(
        kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["dlq", "summary", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", "no-such-topic.dlq"]) == 2
    err = capsys.readouterr().err
    assert "dead-letter topic 'no-such-topic.dlq' does not exist" in err
    assert "--topics" in err and "--dlq-topic" in err


def test_every_source_topics_dead_letters_are_read(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: TopicFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    orders, clicks = make_topic(partitions=1), make_topic(partitions=1)
    created = kafka_admin.create_topics([NewTopic(f"{source}.dlq", num_partitions=1, replication_factor=1)
                                         for source in (orders, clicks)])
    for future in created.values():
        future.result(timeout=30)
    produce(kafka_bootstrap, f"{orders}.dlq", [SampleMessage(b"k", b"{}", "letter")] * 2)
    produce(kafka_bootstrap, f"{clicks}.dlq", [SampleMessage(b"k", b"{}", "letter")] * 3)

    assert cli(["dlq", "summary", "--bootstrap-servers", kafka_bootstrap, "--topics", f"{orders},{clicks}"]) == 0

    out = capsys.readouterr().out
    assert f"dead-letter topic {orders}.dlq: 2 letter(s)" in out
    assert f"dead-letter topic {clicks}.dlq: 3 letter(s)" in out
