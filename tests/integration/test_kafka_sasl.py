"""The pipeline against a broker that requires SASL/SCRAM, configured only through the environment as
deployments configure it: events produced over PLAINTEXT are consumed and delivered through the local
broker's SASL listener, the password never reaches the output, and wrong credentials stop the run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS
from pipeline.dev.local_kafka import SaslListener
from tests.conftest import TopicFactory
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120  # seconds for a run that delivers three events and idles 5 s
REFUSED_WITHIN = 90  # seconds a run with wrong credentials may take to give up

EVENTS = [
    {"type": "identify", "messageId": "sasl-m-1", "userId": "u-1", "traits": {"email": "ann@example.com"}},
    {"type": "track", "event": "Product Viewed", "messageId": "sasl-m-2", "userId": "u-1",
     "properties": {"product_id": "40", "url": "https://my-site.com/iphone", "name": "iPhone"}},
    {"type": "identify", "messageId": "sasl-m-3", "userId": "u-2", "traits": {"email": "bob@example.com"}},
]


def _produce_events(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for event in EVENTS:
        producer.produce(topic, key=event["userId"].encode(), value=orjson.dumps(event))
    assert producer.flush(30) == 0


def _run(sasl: SaslListener, password: str, topic: str, sandbox: Sandbox,
         timeout: float) -> subprocess.CompletedProcess[str]:
    """`wigzo-pipeline run --exit-when-idle 5` in a child process, Kafka reached only through SASL."""
    pipeline_names = {option.env for option in OPTIONS}
    inherited = {name: value for name, value in os.environ.items()  # a developer's shell may configure the pipeline
                 if name not in pipeline_names and not name.startswith(KAFKA_PASSTHROUGH_PREFIX)}
    env = {**inherited,
           "KAFKA_BOOTSTRAP_SERVERS": sasl.bootstrap, "KAFKA_TOPICS": topic,
           "KAFKA_GROUP_ID": f"sasl-{uuid.uuid4().hex[:10]}",
           "KAFKA_OPT_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_OPT_SASL_MECHANISMS": sasl.mechanism,
           "KAFKA_OPT_SASL_USERNAME": sasl.username, "KAFKA_OPT_SASL_PASSWORD": password,
           "WIGZO_BASE_URL": sandbox.url, "WIGZO_ORG_TOKEN": SANDBOX_ORG_TOKEN,
           "METRICS_PORT": "0"}
    try:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--exit-when-idle", "5"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"wigzo-pipeline run did not exit within {timeout:.0f}s:\n{stderr[-3000:]}")


def test_run_consumes_and_delivers_through_the_sasl_listener(kafka_bootstrap: str, kafka_sasl: SaslListener,
                                                            make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=2)
    _produce_events(kafka_bootstrap, topic)

    done = _run(kafka_sasl, kafka_sasl.password.reveal(), topic, sandbox, RUN_TIMEOUT)

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert sorted((r["path"], r["body"]["userId"]) for r in sandbox.control.received()) == [
        ("/rest/v1/learn/event", "u-1"), ("/rest/v1/learn/identify", "u-1"), ("/rest/v1/learn/identify", "u-2"),
    ], output[-5000:]
    assert kafka_sasl.password.reveal() not in output


@pytest.mark.slow
def test_run_with_a_wrong_password_exits_non_zero_saying_authentication_failed(
        kafka_bootstrap: str, kafka_sasl: SaslListener, make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=2)
    _produce_events(kafka_bootstrap, topic)
    wrong = "not-the-development-password"

    done = _run(kafka_sasl, wrong, topic, sandbox, REFUSED_WITHIN)

    assert done.returncode != 0, done.stderr[-5000:]
    assert "authentication" in done.stderr.lower(), done.stderr[-5000:]
    assert sandbox.control.received() == []
    assert wrong not in done.stdout + done.stderr
