"""A real `wigzo-pipeline run` as operators see it: /metrics agrees with the run's own report, /readyz follows a
rejected token, /healthz stays up, every log line is JSON, and no token shows anywhere. (A batch run that cannot
start its work is chaos scenario 6: tests/chaos/test_misconfiguration.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import requests
from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.samples import SampleStream
from tests.conftest import TopicFactory, wait_for
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import everything_committed, free_port, produce, read_all

ROOT = Path(__file__).resolve().parents[2]
API_TOKEN = "api-token-7e51"


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def _outcome_counters(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(_get(port, "/metrics").text):
        if family.name == "wigzo_pipeline_outcomes":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    totals[outcome] = totals.get(outcome, 0) + sample.value
    return totals


def test_metrics_probes_and_json_logs_of_a_real_run(kafka_bootstrap: str, make_topic: TopicFactory,
                                                    sandbox: Sandbox) -> None:
    topic = make_topic(partitions=3)
    samples = list(SampleStream(seed=31).messages(600))
    produce(kafka_bootstrap, topic, samples)
    port, group = free_port(), f"ops-{uuid.uuid4().hex[:8]}"
    sandbox.control.set_faults(latency_ms=5)
    process = _start({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": group,
                      "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN,
                      "WIGZO_API_TOKEN": API_TOKEN, "METRICS_PORT": str(port), "LOG_FORMAT": "json"},
                     "--exit-when-idle", "3")
    health: list[int] = []
    try:
        wait_for(lambda: _probe(port, "/readyz") == 200, 60, "the member to be ready")
        health.append(_get(port, "/healthz").status_code)

        sandbox.control.set_faults(unauthorized=True)  # the token is rejected: delivery pauses, not ready
        wait_for(lambda: _probe(port, "/readyz") == 503, 30, "/readyz to turn 503 while the token is rejected")
        reasons = _get(port, "/readyz").json()["reasons"]
        assert any("auth" in reason for reason in reasons), reasons
        health.append(_get(port, "/healthz").status_code)
        sandbox.control.set_faults(unauthorized=False)
        wait_for(lambda: _probe(port, "/readyz") == 200, 30, "/readyz to recover once the token is accepted")

        wait_for(lambda: everything_committed(kafka_bootstrap, group, topic, 3), 120, "the topic to be drained")
        health.append(_get(port, "/healthz").status_code)
        scraped = _outcome_counters(port)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert health == [200, 200, 200]

    lines = [orjson.loads(line) for line in stderr.decode().splitlines() if line.strip()]  # every line is JSON
    final = next(line["msg"] for line in reversed(lines) if line["msg"].startswith("stopped: read"))
    reported = {outcome: float(final.split(f"{outcome} ")[1].split(",")[0].split(";")[0])
                for outcome in ("delivered", "skipped", "dead_lettered")}
    assert scraped == reported, (scraped, final)
    assert sum(reported.values()) == len(samples)

    letters = read_all(kafka_bootstrap, f"{topic}.dlq")
    assert len(letters) == reported["dead_lettered"]
    dead_letter_bytes = b"".join(value or b"" for letter in letters for _, value in (letter.headers() or []))
    for token in (SANDBOX_ORG_TOKEN, API_TOKEN):
        assert token not in stderr.decode() and token not in stdout.decode()
        assert token.encode() not in dead_letter_bytes


def _probe(port: int, path: str) -> int:
    try:
        return _get(port, path).status_code
    except requests.ConnectionError:  # not listening yet
        return 0
