"""The consumer group end to end, against the real broker and the Wigzo sandbox over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.contract.decoder import EventDecoder
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.dev.sandbox import SandboxControl, SandboxServer
from pipeline.kafka.dead_letter_headers import HEADER_PREFIX, error_headers
from pipeline.kafka.dead_letters import DeadLetterWriteError
from pipeline.kafka.pipeline import Pipeline
from pipeline.model import Outcome, PipelineError
from pipeline.ops.lookups import run_range
from pipeline.ops.redrive import RedriveFilter, redrive_ranges
from pipeline.ops.replay import resolve_ranges
from tests.conftest import TopicFactory
from tests.integration.pipeline_harness import (
    ORG_TOKEN,
    committed_offsets,
    everything_committed,
    live_pipeline,
    predicted_requests,
    produce,
    read_all,
    received_requests,
    run_until,
    settings_for,
)

REQUIRED_DLQ_HEADERS = {"topic", "partition", "offset", "stage", "class", "message", "attempts",
                        "first.failure", "last.failure", "service.version"}


@pytest.fixture
def wigzo() -> Iterator[tuple[SandboxServer, SandboxControl]]:
    server = SandboxServer(org_token=ORG_TOKEN).start()
    control = SandboxControl(server.url)
    yield server, control
    control.close()
    server.stop()


def _all_done(pipeline: Pipeline, produced: int) -> bool:
    return pipeline.status.stats.read >= produced and pipeline.status.outstanding() == 0


@pytest.mark.slow
def test_mixed_stream_every_message_ends_in_exactly_one_outcome(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, control = wigzo
    topic = make_topic(partitions=6)
    samples = list(SampleStream(seed=11).messages(10_000))
    kinds = Counter(s.kind.split(":")[0] for s in samples)
    assert {"identify", "page", "track", "screen", "group", "alias", "invalid", "garbage"} <= set(kinds)
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url)

    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: _all_done(pipeline, len(samples)))

    totals = pipeline.status.outcomes.totals()
    assert pipeline.status.stats.read == len(samples)
    assert sum(totals.values()) == len(samples), totals
    assert received_requests(control.received()) == predicted_requests(settings, topic, samples)

    dead_letters = read_all(kafka_bootstrap, settings.dlq_topic_for(topic))
    assert len(dead_letters) == totals[Outcome.DEAD_LETTERED] > 0
    originals = {(s.key, s.value) for s in samples}
    stages = Counter()
    for letter in dead_letters:
        context = error_headers(letter.headers())
        assert REQUIRED_DLQ_HEADERS <= set(context), context
        assert context["topic"] == topic
        assert (letter.key(), letter.value()) in originals, "the original bytes travel unchanged"
        stages[context["stage"]] += 1
    assert {"decode", "validate", "mapping"} <= set(stages)
    assert ORG_TOKEN not in str([letter.headers() for letter in dead_letters])


def test_each_users_events_arrive_in_produced_order_at_concurrency_64(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, control = wigzo
    control.set_faults(latency_ms=1, latency_jitter_ms=8)  # uneven latency would reorder unordered delivery
    topic = make_topic(partitions=6)
    samples = [s for s in SampleStream(seed=3, users=20).messages(3000) if s.key and s.key != b"garbage"]
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url, max_in_flight=64)
    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: _all_done(pipeline, len(samples)))

    produced_order: dict[str, list[str]] = defaultdict(list)
    decoder = EventDecoder(settings)
    for sample in samples:
        event = decoder.decode(topic, sample.value)
        if isinstance(event, dict):
            produced_order[sample.key.decode()].append(event["messageId"])
    arrived: dict[str, list[str]] = defaultdict(list)
    for request in control.received():
        arrived[request["body"]["userId"]].append(request["idempotency_key"].split(":")[0])
    checked = 0
    for user, ids in produced_order.items():
        position = {message_id: n for n, message_id in enumerate(ids)}
        seen = [position[i] for i in arrived[user] if i in position]
        assert seen == sorted(seen), f"{user}'s events arrived out of order"
        checked += len(seen)
    assert checked > 500


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["range,roundrobin", "cooperative-sticky"])
def test_rebalance_mid_stream_loses_nothing(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl],
        strategy: str) -> None:
    server, control = wigzo
    control.set_faults(latency_ms=20)  # slow enough that the second member joins well before the end
    topic = make_topic(partitions=6)
    samples = list(SampleStream(seed=5).messages(4000))
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url, max_in_flight=8, max_pending_per_partition=100,
                            kafka_config={"partition.assignment.strategy": strategy})
    first, second = live_pipeline(settings), live_pipeline(settings)
    finished = threading.Event()
    all_committed = _committed_checker(kafka_bootstrap, settings.group_id, topic, 6)

    def total_outcomes() -> int:
        return first.status.outcomes.total() + second.status.outcomes.total()

    def run_second() -> None:
        while first.status.outcomes.total() < 500:  # join once the first member is well into the stream
            time.sleep(0.05)
        run_until(second, settings, finished.is_set)

    joiner = threading.Thread(target=run_second)
    joiner.start()
    try:
        run_until(first, settings, all_committed)
    finally:
        finished.set()
    joiner.join(timeout=120)

    assert second.status.stats.read > 0, "the second member must have taken partitions over"
    expected = predicted_requests(settings, topic, samples)
    received = received_requests(control.received())
    missing = expected - received
    assert not missing, f"{sum(missing.values())} requests never reached Wigzo"
    duplicates = sum((received - expected).values())
    dead_lettered = len(read_all(kafka_bootstrap, settings.dlq_topic_for(topic)))
    print(f"rebalance ({strategy}): outcomes {total_outcomes()} for {len(samples)} messages, {duplicates} "
          f"duplicate deliveries, {dead_lettered} dead letters")
    assert duplicates == 0, "a clean rebalance drains before it commits: nothing finished is repeated"
    assert total_outcomes() == len(samples)


def _committed_checker(bootstrap: str, group: str, topic: str, partitions: int) -> Callable[[], bool]:
    """`everything_committed`, asked at most twice a second (it opens a client each time)."""
    last = [0.0]

    def check() -> bool:
        if time.monotonic() - last[0] < 0.5:
            return False
        last[0] = time.monotonic()
        return everything_committed(bootstrap, group, topic, partitions)

    return check


def _run_subprocess(settings_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"], env=env,
                                cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_loses_nothing_and_sigterm_exits_cleanly(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl],
        tmp_path: Path) -> None:
    server, control = wigzo
    control.set_faults(latency_ms=3)
    topic = make_topic(partitions=6)
    samples = list(SampleStream(seed=9).messages(4000))
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url, max_in_flight=32)
    # the killed member's partitions move once the broker gives up on it: after the broker's minimum session
    # timeout (6 s) rather than librdkafka's default 45 s
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": settings.group_id,
           "WIGZO_BASE_URL": server.url, "WIGZO_ORG_TOKEN": ORG_TOKEN, "WIGZO_MAX_IN_FLIGHT": "32",
           "KAFKA_OPT_SESSION_TIMEOUT_MS": "6000", "KAFKA_OPT_HEARTBEAT_INTERVAL_MS": "1000",
           "METRICS_PORT": "0"}  # no probes needed: a fixed port would collide with runs elsewhere in the suite

    log = tmp_path / "run.log"
    victim = _run_subprocess(env, log)
    deadline = time.monotonic() + 60
    while control.count() < 2500 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    at_kill = control.count()
    assert 0 < at_kill, "the first run never delivered anything"

    survivor = _run_subprocess(env, log)
    deadline = time.monotonic() + 120
    while not everything_committed(kafka_bootstrap, settings.group_id, topic, 6) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivor.send_signal(signal.SIGTERM)
    survivor.wait(timeout=60)
    assert survivor.returncode == 0, log.read_text()[-2000:]
    assert everything_committed(kafka_bootstrap, settings.group_id, topic, 6)

    expected = predicted_requests(settings, topic, samples)
    received = received_requests(control.received())
    assert not expected - received, "a message went missing across the crash"
    duplicates = received - expected
    print(f"SIGKILL after {at_kill} deliveries: {sum(duplicates.values())} duplicates from the crash window")
    # duplicates come only from the crash window: what was in flight or finished but not yet committed
    assert sum(duplicates.values()) <= at_kill


def test_replay_from_a_timestamp_redelivers_exactly_that_range(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, control = wigzo
    topic = make_topic(partitions=6)
    stream = SampleStream(seed=21)
    early, late = list(stream.messages(600)), list(stream.messages(400))
    split_ms = int(time.time() * 1000)
    produce(kafka_bootstrap, topic, early, timestamp_ms=split_ms - 60_000)
    produce(kafka_bootstrap, topic, late, timestamp_ms=split_ms + 60_000)
    settings = settings_for(kafka_bootstrap, topic, server.url)
    live = live_pipeline(settings)
    run_until(live, settings, lambda: _all_done(live, 1000))
    control.reset()

    since = datetime.fromtimestamp(split_ms / 1000, UTC).isoformat()
    ranges = resolve_ranges(settings, topic, since=since, until=None, offsets=None)
    assert sum(end - start for start, end in ranges.values()) == len(late)
    replay = run_range(settings, ranges, f"{settings.group_id}.replay", commit=False)
    assert replay.status.stats.read == len(late)
    assert received_requests(control.received()) == predicted_requests(settings, topic, late)
    assert everything_committed(kafka_bootstrap, settings.group_id, topic, 6), "live group untouched"


def test_redrive_delivers_fixed_dead_letters_and_re_dead_letters_the_rest(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, control = wigzo
    control.set_faults(reject_event_names=["addtocart", "removedfromcart"])  # the strict rule is on
    topic = make_topic(partitions=3)
    samples = list(SampleStream(seed=4).messages(1500))
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url)
    live = live_pipeline(settings)
    run_until(live, settings, lambda: _all_done(live, len(samples)))
    dlq = settings.dlq_topic_for(topic)
    first_letters = read_all(kafka_bootstrap, dlq)
    rejected = [m for m in first_letters if error_headers(m.headers())["stage"] == "delivery"]
    assert rejected and all(error_headers(m.headers())["http.status"] == "400" for m in rejected)

    control.set_faults(reject_event_names=["removedfromcart"])  # fixed for addtocart only
    before = control.count()
    group = f"{settings.group_id}.redrive"
    redrive = run_range(settings, redrive_ranges(settings, dlq, group), group, commit=True,
                         reader=RedriveFilter(stage="delivery"))
    totals = redrive.status.outcomes.totals()
    delivered_now = control.received()[before:]
    assert totals[Outcome.DELIVERED] == len(delivered_now) > 0
    assert {r["body"]["eventName"] for r in delivered_now} == {"addtocart"}
    first_positions = {(m.partition(), m.offset()) for m in first_letters}
    again = [m for m in read_all(kafka_bootstrap, dlq) if (m.partition(), m.offset()) not in first_positions]
    assert len(again) == totals[Outcome.DEAD_LETTERED] > 0
    for letter in again:
        context = error_headers(letter.headers())
        assert context["attempts"] == "2" and context["topic"] == topic
        error_names = Counter(k for k, _ in letter.headers() if k.startswith(HEADER_PREFIX))
        assert set(error_names.values()) == {1}, "the new context replaces the old one, it is not appended"
    second = run_range(settings, redrive_ranges(settings, dlq, group), group, commit=True,
                        reader=RedriveFilter(stage="delivery", error_class="no-such-class"))
    assert second.status.outcomes.totals()[Outcome.DELIVERED] == 0, "a second redrive resumes after the first"


def test_unwritable_dead_letter_topic_halts_without_committing(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, _ = wigzo
    topic = make_topic(partitions=1)
    produce(kafka_bootstrap, topic, [SampleMessage(b"k", b"not an event %d" % n, "garbage") for n in range(20)])
    settings = settings_for(kafka_bootstrap, topic, server.url, dlq_topic="bad topic name!")
    with pytest.raises(DeadLetterWriteError, match="'bad topic name!' is not a valid Kafka topic name"):
        live_pipeline(settings)  # refused while building, before anything is read
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic, 1)[0] < 0, \
        "nothing may be committed when the dead-letter topic cannot be used"


@pytest.mark.slow
def test_a_wigzo_outage_pauses_consumption_and_dead_letters_nothing(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, control = wigzo
    topic = make_topic(partitions=6)
    samples = list(SampleStream(seed=13).messages(1500))
    produce(kafka_bootstrap, topic, samples)
    settings = settings_for(kafka_bootstrap, topic, server.url)
    expected = predicted_requests(settings, topic, samples)
    deliverable_stages = Counter()
    control.set_faults(outage_seconds=8)  # Wigzo answers 503 to everything for 8 seconds
    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: _all_done(pipeline, len(samples)), timeout=180)

    assert received_requests(control.received()) == expected, "everything arrives after the outage"
    for letter in read_all(kafka_bootstrap, settings.dlq_topic_for(topic)):
        deliverable_stages[error_headers(letter.headers())["stage"]] += 1
    assert deliverable_stages["delivery"] == 0, "an outage must not dead-letter anything"
    assert any(a["outcome"] == 503 for a in control.attempts()), "the outage really happened"


def test_a_topic_pattern_subscription_reads_every_match_but_never_its_dead_letters(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: tuple[SandboxServer, SandboxControl]) -> None:
    server, _ = wigzo
    prefix = f"pattern-{uuid.uuid4().hex[:8]}"
    topics = [make_topic(partitions=2, prefix=prefix), make_topic(partitions=2, prefix=prefix)]
    samples = [*SampleStream(seed=17).messages(200), SampleMessage(b"k", b"not an event", "garbage")]
    for topic in topics:
        produce(kafka_bootstrap, topic, samples)
    pattern = f"^{prefix}-[0-9a-f]+$"
    with pytest.raises(PipelineError, match="set DLQ_TOPIC explicitly"):
        live_pipeline(settings_for(kafka_bootstrap, pattern, server.url))

    dead_letters = make_topic(partitions=2, prefix=f"{prefix}-dead")
    settings = settings_for(kafka_bootstrap, pattern, server.url, dlq_topic=dead_letters)
    pipeline = live_pipeline(settings)
    run_until(pipeline, settings, lambda: _all_done(pipeline, 2 * len(samples)))
    assert pipeline.status.stats.read == 2 * len(samples)
    assert len(read_all(kafka_bootstrap, dead_letters)) == pipeline.status.outcomes.totals()[Outcome.DEAD_LETTERED] > 0
