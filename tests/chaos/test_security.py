"""Scenario 7: security under chaos.

- Known secrets (the Wigzo org and API tokens, the Kafka SASL password) never appear in anything the pipeline
  writes: any log line of any process, /metrics, /readyz, a dead letter's headers or payload; while Wigzo
  rejects events, drops connections, fails, rejects the token for a while, or cannot be reached at all (the
  HTTP library then puts the whole URL, query string and all, into its messages).
- SASL end to end, with every credential from a TOML config file and secret files: the run authenticates through
  the `kafka_sasl` listener. Wrong SASL credentials failing fast with a clear error, and SASL credentials from the
  environment, are covered by tests/integration/test_kafka_sasl.py and not repeated here.
- TLS: a sandbox serving a certificate from a private CA gets nothing from a member that does not trust that CA
  (nothing dead-lettered either: the events wait), and everything once WIGZO_CA_BUNDLE names the CA.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from pipeline.dev.local_kafka import SaslListener
from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import Faults
from tests.chaos.audit import ResultRow, audit, read_letters, report
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Member,
    Members,
    Scale,
    committed_to_end,
    free_port,
    produce,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for


def _secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _config_file(directory: Path, sasl: SaslListener, topic: str, group: str, base_url: str) -> Path:
    """Everything a SASL deployment needs, in the config file; the secrets in files of their own."""
    path = directory / "pipeline.toml"
    path.write_text(f'''
bootstrap_servers = "{sasl.bootstrap}"
topics = ["{topic}"]
group_id = "{group}"
wigzo_base_url = "{base_url}"
wigzo_org_token_file = "{_secret_file(directory, "org-token", ORG_TOKEN)}"
wigzo_api_token_file = "{_secret_file(directory, "api-token", API_TOKEN)}"
log_level = "DEBUG"
max_attempts = 2

[kafka]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanisms" = "{sasl.mechanism}"
"sasl.username" = "{sasl.username}"
"sasl.password_file" = "{_secret_file(directory, "kafka-password", sasl.password.reveal())}"
''')
    return path


def _scrape(member: Member, into: list[str]) -> None:
    for path in ("/metrics", "/readyz", "/healthz"):
        if (answer := member.get(path)) is not None:
            into.append(answer.text)


@pytest.mark.slow
def test_no_secret_appears_in_logs_metrics_or_dead_letters_of_a_sasl_run_through_every_kind_of_failure(
        kafka_bootstrap: str, kafka_sasl: SaslListener, make_topic: TopicFactory, wigzo: WigzoFactory,
        members: Members, scale: Scale, tmp_path: Path) -> None:
    secrets = [ORG_TOKEN, API_TOKEN, kafka_sasl.password.reveal()]
    sandbox = wigzo(faults=Faults(latency_ms=2, error_rate=0.05, drop_rate=0.03, reject_event_names=("addtocart",)))
    topic = make_topic(partitions=3, prefix="chaos-secrets")
    unreachable_topic = make_topic(partitions=1, prefix="chaos-secrets-refused")
    produced = produce(kafka_bootstrap, topic, SampleStream(seed=71).messages(scale.events(1500)))
    produce(kafka_bootstrap, unreachable_topic, SampleStream(seed=72).messages(100))
    group = f"{topic}-group"
    config = _config_file(tmp_path, kafka_sasl, topic, group, sandbox.url)
    from_file = {"WIGZO_PIPELINE_CONFIG": str(config), "WIGZO_ORG_TOKEN": None, "WIGZO_API_TOKEN": None}
    sasl_member = members.start("sasl", from_file)
    # Wigzo unreachable: every attempt fails with a connection error whose text holds the request's whole URL
    refused_member = members.start("refused", {
        **from_file, "KAFKA_TOPICS": unreachable_topic, "KAFKA_GROUP_ID": f"{unreachable_topic}-group",
        "WIGZO_BASE_URL": f"http://127.0.0.1:{free_port()}", "WIGZO_CONNECT_TIMEOUT": "1"})
    scraped: list[str] = []

    wait_for(lambda: sandbox.control.count() > len(produced) // 4, 60, "deliveries through the SASL listener")
    sandbox.control.set_faults(unauthorized=True)  # the token "revoked" for a while
    wait_for(lambda: sasl_member.readyz()[0] == 503, 30, "/readyz 503 while the token is rejected")
    _scrape(sasl_member, scraped)
    rejected = sandbox.control.stats()["seen"]
    wait_for(lambda: sandbox.control.stats()["seen"] > rejected, 30, "a probe refused with 401 while unready")
    sandbox.control.set_faults(unauthorized=False)
    wait_for(lambda: refused_member.readyz()[0] == 503, 60, "/readyz 503 while Wigzo cannot be reached")
    _scrape(refused_member, scraped)
    wait_for(lambda: committed_to_end(kafka_bootstrap, group, topic), 120, "the SASL member to finish", interval=1.0)
    _scrape(sasl_member, scraped)
    exits = [stop_member(sasl_member), stop_member(refused_member)]

    letters = read_letters(kafka_bootstrap, f"{topic}.dlq") + read_letters(kafka_bootstrap, f"{unreachable_topic}.dlq")
    written = [b"".join((value or b"") for _, value in letter.headers) + (letter.value or b"") for letter in letters]
    leaks = {
        "logs": members.leaked(secrets),
        "metrics and probes": [s[:6] for s in secrets if any(s in text for text in scraped)],
        "dead letters": [s[:6] for s in secrets if any(s.encode() in blob for blob in written)],
    }
    result = audit(kafka_bootstrap, topic, produced, sandbox,
                   letters=[letter for letter in letters if letter.context.get("topic") == topic])
    delivery_letters = sum(letter.context.get("stage") == "delivery" for letter in letters)
    report(ResultRow.of("7 secrets (SASL, config file)", result, None,
                        f"{scale.name}; SASL/SCRAM with credentials from a config file and secret files, DEBUG logs; "
                        "Wigzo: 5% errors, 3% dropped connections, addtocart rejected, a 401 phase; a second "
                        "member against an unreachable Wigzo", delivery_letters=delivery_letters,
                        leaks={where: found for where, found in leaks.items() if found}))

    assert exits == [0, 0], members.tails()
    assert result.missing == 0, result.missing_examples
    assert delivery_letters > 0, "delivery failures' reasons and histories were written and checked"
    assert "Max retries exceeded with url" in refused_member.output(), "the URL-bearing error was logged, scrubbed"
    assert not any(leaks.values()), leaks


@pytest.mark.slow
def test_a_sandbox_with_an_untrusted_certificate_gets_nothing_until_wigzo_ca_bundle_names_its_ca(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale,
        tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    sandbox = wigzo(ssl_context=context, ca_bundle=str(ca_file))
    assert sandbox.url.startswith("https://")
    topic = make_topic(partitions=3, prefix="chaos-tls")
    produced = produce(kafka_bootstrap, topic, SampleStream(seed=73).messages(scale.events(500)))
    settings = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": f"{topic}-group",
                "WIGZO_BASE_URL": sandbox.url}

    untrusting = members.start("untrusting", settings)
    refused_for = wait_for(lambda: untrusting.readyz()[0] == 503, 60, "/readyz 503 while the certificate is refused")
    tried = untrusting.requests_sent()
    wait_for(lambda: untrusting.requests_sent() >= tried + 2, 30, "two more attempts at the untrusted sandbox")
    seen_before_trust = sandbox.control.stats()["seen"]
    untrusting_exit = stop_member(untrusting)
    trusting = members.start("trusting", {**settings, "WIGZO_CA_BUNDLE": str(ca_file)}, "--exit-when-idle", "3")
    wait_for(lambda: sandbox.control.count() > 0 or not trusting.alive, 20, "a delivery once the CA is trusted")
    trusting_exit = trusting.wait(timeout=120)
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("7 TLS, private CA", result, None,
                        f"{scale.name}; HTTPS sandbox with a trustme certificate; refused (/readyz 503 after "
                        f"{refused_for:.1f} s) without WIGZO_CA_BUNDLE, then a member given the CA",
                        requests_before_trust=seen_before_trust))

    assert seen_before_trust == 0, "no request may pass a certificate the member does not trust"
    assert "SSLError" in untrusting.output(), untrusting.tail()
    assert untrusting_exit == 0 and trusting_exit == 0, members.tails()
    assert result.missing == 0, result.missing_examples
    assert result.delivered > 0
    assert all(letter.context["stage"] != "delivery" for letter in result.letters.values()), \
        "a refused certificate is Wigzo unreachable, never the event's fault"
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
