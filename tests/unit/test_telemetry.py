"""Logs, probes and the Kafka watch: what an operator sees, without a broker."""

from __future__ import annotations

import ast
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Producer

from pipeline.kafka.watch import SUMMARY_INTERVAL, KafkaAccessError, KafkaWatch
from pipeline.model import Scrubber, Secret
from pipeline.telemetry.logs import (
    LIBRDKAFKA_LOG,
    JsonFormatter,
    RepeatFilter,
    TextFormatter,
    message_fields,
    with_kafka_logging,
)
from pipeline.telemetry.probes import LIVENESS_BOUND, ProbeApp
from tests.fakes.clock import SimulatedClock

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-3f9a"


def _record(message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("pipeline.test", logging.WARNING, __file__, 1, message, (), None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_json_lines_parse_carry_message_coordinates_and_never_a_token() -> None:
    formatter = JsonFormatter(Scrubber([Secret(TOKEN)]))
    line = formatter.format(_record(f"POST /event?org_token={TOKEN} failed",
                                    **message_fields("events", 3, 41, "m-1")))
    entry = orjson.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "pipeline.test"
    assert (entry["topic"], entry["partition"], entry["offset"], entry["message_id"]) == ("events", 3, 41, "m-1")
    assert TOKEN not in line and "org_token=***" in entry["msg"]
    assert entry["ts"].endswith("Z")


def test_text_lines_show_coordinates_and_are_scrubbed() -> None:
    line = TextFormatter(Scrubber([Secret(TOKEN)])).format(_record(f"token {TOKEN}", **message_fields("t", 0, 7)))
    assert line.endswith("token *** [topic=t partition=0 offset=7]")


def test_a_repeating_kafka_line_passes_once_a_window_with_the_count_held_back() -> None:
    clock = SimulatedClock(1000.0)
    repeat = RepeatFilter(window=60.0, clock=clock)
    passed = [repeat.filter(_record(f"Connect to ipv4#127.0.0.1:1 failed (after {n}ms)")) for n in range(25)]
    assert passed == [True] + [False] * 24
    assert repeat.filter(_record("another kind of line"))
    clock.now += 61
    record = _record("Connect to ipv4#127.0.0.1:1 failed (after 9ms)")
    assert repeat.filter(record)
    assert "24 similar lines held back" in record.getMessage()


@pytest.fixture
def kafka_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("pipeline.kafka.watch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def test_an_unreachable_broker_is_said_once_then_summarised_then_its_end_is_said(kafka_log: io.StringIO) -> None:
    clock = SimulatedClock(1000.0)
    watch = KafkaWatch("127.0.0.1:1", clock)
    refused = KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:1 failed: Connection refused")
    for _ in range(50):
        watch.on_error(refused)
        watch.tick()
    assert kafka_log.getvalue().count("\n") == 1, "fifty errors, one line"
    assert "cannot reach Kafka at 127.0.0.1:1" in kafka_log.getvalue()
    assert watch.problems() and watch.problems()[0].startswith("unreachable:")
    clock.now += SUMMARY_INTERVAL
    watch.tick()
    assert "still unreachable after 30s (50 reports" in kafka_log.getvalue()
    watch.reached()
    assert "unreachable resolved" in kafka_log.getvalue()
    assert watch.problems() == []


def _stats(*brokers: tuple[str, int, int]) -> str:
    """librdkafka's statistics JSON, reduced to what the watch reads: (nodename, rxidle µs, requests waiting)."""
    return orjson.dumps({"brokers": {f"{name}/{n}": {"nodename": name, "rxidle": idle, "waitresp_cnt": waiting,
                                                     "outbuf_cnt": 0}
                                     for n, (name, idle, waiting) in enumerate(brokers)}}).decode()


def test_a_broker_that_answers_nothing_while_requests_wait_is_reported_once_and_its_end_said(
        kafka_log: io.StringIO) -> None:
    clock = SimulatedClock(1000.0)
    watch = KafkaWatch("b:9092", clock, stall_after=15.0)
    watch.on_stats(_stats(("b:9092", 300_000, 1), ("GroupCoordinator", -1, 0)))
    for second in range(14):  # the broker stops answering: rxidle grows with the clock
        clock.now += 1.0
        watch.on_stats(_stats(("b:9092", int((second + 1.3) * 1e6), 2)))
        watch.check_silence(working=True)
    assert watch.problems() == [] and kafka_log.getvalue() == "", "14.3 s: under the threshold"
    for second in range(14, 40):
        clock.now += 1.0
        watch.on_stats(_stats(("b:9092", int((second + 1.3) * 1e6), 3)))
        watch.check_silence(working=True)
    lines = kafka_log.getvalue().splitlines()
    assert len(lines) == 1 and "Kafka broker b:9092 has answered nothing for 15s (3 requests waiting)" in lines[0]
    assert watch.problems() == ["no answer for 40s from broker b:9092"]
    clock.now += 1.0
    watch.on_stats(_stats(("b:9092", 20_000, 1)))
    watch.check_silence(working=True)
    assert "Kafka broker b:9092 answers again after 41s without an answer" in kafka_log.getvalue()
    assert watch.problems() == []


def test_a_quiet_broker_with_nothing_asked_of_it_or_no_work_assigned_is_not_a_hang(kafka_log: io.StringIO) -> None:
    clock = SimulatedClock(1000.0)
    watch = KafkaWatch("b:9092", clock, stall_after=15.0)
    clock.now += 60.0
    watch.on_stats(_stats(("idle:9092", 60_000_000, 0), ("b:9092", 60_000_000, 1)))
    watch.check_silence(working=False)
    watch.on_stats(_stats(("idle:9092", 61_000_000, 0)))
    watch.check_silence(working=True)
    assert watch.problems() == [] and kafka_log.getvalue() == ""


def test_a_reconnection_that_has_received_nothing_yet_does_not_hide_the_silence() -> None:
    """After librdkafka's request timeout it reconnects: the new connection reports rxidle -1, which must not
    count as an answer."""
    clock = SimulatedClock(1000.0)
    watch = KafkaWatch("b:9092", clock, stall_after=15.0)
    watch.on_stats(_stats(("b:9092", 0, 1)))
    clock.now += 20.0
    watch.on_stats(_stats(("b:9092", -1, 1)))
    watch.check_silence(working=True)
    assert watch.problems() == ["no answer for 20s from broker b:9092"]


def test_rejected_credentials_stop_the_run_with_what_to_fix() -> None:
    watch = KafkaWatch("broker:9094")
    watch.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed"))
    with pytest.raises(KafkaAccessError, match="KAFKA_OPT_SASL_PASSWORD"):
        watch.raise_if_fatal()


def test_a_missing_topic_is_a_problem_not_a_failure() -> None:
    watch = KafkaWatch("b")
    watch.on_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Subscribed topic not available: nope"))
    watch.raise_if_fatal()
    assert watch.problems() == ["missing topic: Subscribed topic not available: nope"]


def test_a_metadata_answer_ends_unreachable_but_not_a_missing_topic(kafka_log: io.StringIO) -> None:
    watch = KafkaWatch("b")
    watch.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    watch.on_error(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Subscribed topic not available: nope"))
    watch.reached(topics=False)
    assert watch.problems() == ["missing topic: Subscribed topic not available: nope"]
    assert "unreachable resolved" in kafka_log.getvalue() and "missing topic resolved" not in kafka_log.getvalue()
    watch.reached()
    assert watch.problems() == []


def _call(app: ProbeApp, path: str) -> tuple[str, bytes]:
    seen: list[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""},
                        lambda status, headers: seen.append(status)))
    return seen[0], body


def test_healthz_fails_only_when_the_loop_stopped_polling() -> None:
    clock = SimulatedClock(1000.0)
    last_poll = [clock.now]
    app = ProbeApp(lambda: last_poll[0], lambda: [], clock)
    assert _call(app, "/healthz")[0] == "200 OK"
    clock.now += LIVENESS_BOUND + 1
    status, body = _call(app, "/healthz")
    assert status.startswith("503") and orjson.loads(body)["alive"] is False
    last_poll[0] = clock.now
    assert _call(app, "/healthz")[0] == "200 OK"


def test_readyz_says_why_not_ready() -> None:
    reasons: list[str] = ["Wigzo: auth_failed"]
    app = ProbeApp(lambda: 0.0, lambda: reasons, lambda: 0.0)
    status, body = _call(app, "/readyz")
    assert status.startswith("503") and orjson.loads(body) == {"ready": False, "reasons": ["Wigzo: auth_failed"]}
    reasons.clear()
    status, body = _call(app, "/readyz")
    assert status == "200 OK" and orjson.loads(body) == {"ready": True, "reasons": []}


def test_metrics_are_served_and_unknown_paths_say_where_to_look() -> None:
    app = ProbeApp(lambda: 0.0, lambda: [], lambda: 0.0)
    status, body = _call(app, "/metrics")
    assert status == "200 OK" and b"wigzo_pipeline_outcomes_total" in body
    status, body = _call(app, "/nope")
    assert status.startswith("404") and b"/metrics" in body


GETPID_LINE = ("[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:19092/1: "
               "Broker: Coordinator load in progress: retrying")


@pytest.mark.parametrize(("level", "text", "expected"), [
    (logging.WARNING, GETPID_LINE, logging.DEBUG),
    (logging.WARNING, "[thrd:main]: FindCoordinator response error: Coordinator not available", logging.DEBUG),
    (logging.ERROR, "[thrd:127.0.0.1:1/bootstrap]: Connect to ipv4#127.0.0.1:1 failed", logging.ERROR),
    (logging.INFO, "[thrd:main]: some other line", logging.INFO),
])
def test_librdkafka_lines_keep_their_level_but_a_loading_coordinator_is_debug(
        level: int, text: str, expected: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    LIBRDKAFKA_LOG.log(level, "%s [%s] %s", "GETPID", "rdkafka#producer-3", text)
    [record] = [r for r in caplog.records if r.name == "librdkafka"]
    assert record.levelno == expected and record.getMessage() == f"GETPID [rdkafka#producer-3] {text}"


def test_a_client_made_with_kafka_logging_logs_through_logging_not_raw_to_stderr(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    producer = Producer(with_kafka_logging({"bootstrap.servers": "127.0.0.1:1", "reconnect.backoff.ms": 10}))
    deadline = time.monotonic() + 10
    while not any(r.name == "librdkafka" for r in caplog.records) and time.monotonic() < deadline:
        producer.poll(0.1)
    assert any("127.0.0.1:1" in r.getMessage() for r in caplog.records if r.name == "librdkafka")
    assert "|FAIL|" not in capfd.readouterr().err, "no line in librdkafka's own stderr format"


def _client_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("Consumer", "Producer", "AdminClient"):
            yield node


def test_every_kafka_client_the_package_makes_logs_through_the_one_helper() -> None:
    """`with_kafka_logging` (directly, or through runner.consumer_config, which returns it) for every client."""
    made_with = {"with_kafka_logging", "consumer_config"}
    bare = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        for call in _client_calls(ast.parse(path.read_text(), str(path))):
            config = call.args[0] if call.args else None
            if not (isinstance(config, ast.Call) and isinstance(config.func, ast.Name) and config.func.id in made_with):
                bare.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert bare == []
