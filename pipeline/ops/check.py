"""`wigzo-pipeline check`: is this deployment ready to run? One pass/fail row per thing `run` depends on.

It is read-only on purpose, so it is safe to run against production before `run` starts (a deploy step) or
when `/readyz` fails: it creates no topic, commits no offset and sends no event to Wigzo. With several Wigzo
destinations (`[destinations.NAME]`), each one's base URL and token get rows of their own. It ends by saying
which settings take effect while running (SIGHUP, or a change to their file) and which need a restart. Every check has a
timeout, so an unreachable broker or a black-holed Wigzo fails the check instead of hanging it; a check whose
prerequisite failed is shown as SKIP rather than failing a second time for the same cause.
"""

from __future__ import annotations

import argparse
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConsumerGroupDescription

from pipeline.config import OPTIONS, ConfigError, Settings, add_options, load_settings
from pipeline.kafka.admin import (
    BrokerOffsets,
    KafkaErrors,
    KafkaUnreachable,
    TopicCreateError,
    cluster_metadata,
    dead_letter_feeds,
    ensure_topic,
    partition_lag,
    source_partitions,
)
from pipeline.kafka.assignment import GroupSubscription
from pipeline.model import PipelineError, Scrubber
from pipeline.telemetry.logs import configure_for, with_kafka_logging
from pipeline.wigzo.filters import describe as describe_filters

KAFKA_TIMEOUT = 8.0  # seconds per broker request: an unreachable broker fails its row within ~10 s
RESULT_TIMEOUT = KAFKA_TIMEOUT + 2  # waiting on a request's future: its own request_timeout fires first
TOKEN_NOTE = ("Wigzo has no side-effect-free call to verify the token: it is checked on the first delivery; "
              "a rejected token pauses delivery and makes /readyz fail")
CHECKS = ("configuration", "kafka", "source topics", "dead-letter topic", "consumer group", "wigzo base url",
          "org token")
LIVE_NOTE = ("Changed while running (SIGHUP, or a change to a file they were read from), these take effect without a "
             f"restart: {', '.join(option.attr for option in OPTIONS if option.live)}; every other setting "
             "(Kafka, topics, destinations, workers, metrics port, ...) only on restart")

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    status: Status
    detail: str
    fix: str = ""  # for a failure: "<Subject>: <what is wrong> — <what to do>"


def passed(name: str, detail: str) -> Row:
    return Row(name, "PASS", detail)


def failed(name: str, detail: str, fix: str) -> Row:
    return Row(name, "FAIL", detail, fix)


def skipped(names: tuple[str, ...], because: str) -> list[Row]:
    return [Row(name, "SKIP", f"not checked: {because}") for name in names]


def check_configuration(args: argparse.Namespace) -> tuple[Settings | None, Row]:
    """The settings as `run` reads them, including the topic-pattern rules it refuses to start without and every
    destination filter, parsed."""
    try:
        settings = load_settings(args)
        GroupSubscription(settings.topics, settings.dlq_topic)
    except re.error as exc:
        return None, failed("configuration", f"a KAFKA_TOPICS pattern is not a regular expression: {exc}",
                            f"Configuration: a KAFKA_TOPICS pattern is not a regular expression ({exc}) — fix it")
    except PipelineError as exc:
        return None, failed("configuration", str(exc), f"Configuration: {exc}")
    return settings, passed("configuration", "; ".join(["settings are valid", *destinations_summary(settings)]))


def destinations_summary(settings: Settings) -> list[str]:
    """The destinations and the topics each owns (when the config file names them), and what privacy enforces
    for each."""
    if not settings.destinations:
        return privacy_summary(settings)
    parts = [f"{len(settings.destinations)} destinations: " + "; ".join(
        f"{name} owns {', '.join(own.topics)}" for name, own in settings.for_destinations())]
    for name, own in settings.for_destinations():
        parts += [f"{name}: {line}" for line in privacy_summary(own)]
    return parts


def privacy_summary(settings: Settings) -> list[str]:
    """What consent and the destination filters will do: every filter was parsed with the settings."""
    summary = []
    if settings.consent_categories:
        summary.append(f"consent required for {', '.join(settings.consent_categories)} (an event without a consent "
                       f"object: {settings.consent_missing})")
    if settings.filters:
        summary.append(describe_filters(settings.filters))
    return summary


class KafkaProbe:
    """One admin client for the Kafka checks; its errors say why a broker is unreachable (refused, DNS, TLS, SASL)
    where the failed request only says that it is."""

    def __init__(self, settings: Settings) -> None:
        self.errors = KafkaErrors()
        # log_level 0: the reasons arrive through error_cb and go into the table, not as stderr noise
        self.config: dict[str, Any] = {"log_level": 0, **settings.kafka_client_config()}
        self.admin = AdminClient(with_kafka_logging({**self.config, "error_cb": self.errors}))

    def metadata(self) -> ClusterMetadata:
        """Every topic's metadata; gives up early once librdkafka reports every broker down (refused, DNS),
        and at KAFKA_TIMEOUT when connections just hang."""
        return cluster_metadata(self.admin, self.errors, KAFKA_TIMEOUT, fail_fast=True)


def check_kafka(probe: KafkaProbe, settings: Settings) -> tuple[Row, ClusterMetadata | None]:
    started = time.monotonic()
    try:
        metadata = probe.metadata()
    except KafkaUnreachable as exc:
        return failed("kafka", exc.reason.str(),
                      f"Kafka: cannot reach {settings.bootstrap_servers} ({exc.reason.str()}) — {exc.fix}"), None
    elapsed_ms = (time.monotonic() - started) * 1000
    return passed("kafka", f"{settings.bootstrap_servers}: {len(metadata.brokers)} broker(s), cluster "
                           f"{metadata.cluster_id}, answered in {elapsed_ms:.0f} ms"), metadata


def check_source_topics(settings: Settings, metadata: ClusterMetadata) -> tuple[Row, dict[str, int]]:
    """Partition counts of the topics `run` would read; a `^pattern` entry must match at least one."""
    found: dict[str, int] = {}
    problems = []
    for entry in settings.topics:
        if entry.startswith("^"):
            matches = sorted(name for name in metadata.topics if re.match(entry[1:], name))
            found.update((name, len(metadata.topics[name].partitions)) for name in matches)
            if not matches:
                problems.append(f"pattern {entry!r} matches no topic")
            continue
        topic = metadata.topics.get(entry)
        if topic is None:
            problems.append(f"{entry!r} does not exist (or this principal may not describe it)")
        elif topic.error is not None:
            problems.append(f"{entry!r}: {topic.error.str()}")
        else:
            found[entry] = len(topic.partitions)
    for name in found:
        try:
            settings.destination_of(name)
        except ConfigError as exc:  # two destinations' patterns match a topic that exists
            problems.append(str(exc))
    if problems:
        text = "; ".join(problems)
        return failed("source topics", text, f"Source topics: {text} — create the topic(s) or fix KAFKA_TOPICS, "
                                             "and grant this principal DESCRIBE and READ on them"), found
    return passed("source topics", ", ".join(f"{name} ({count} partitions)" for name, count in found.items())), found


def check_dead_letter_topic(probe: KafkaProbe, settings: Settings, metadata: ClusterMetadata) -> Row:
    """It exists, or the broker confirms (validate-only, nothing is created) that `run` may create it when it starts,
    with as many partitions as `run` would give it."""
    details, fixes = [], []
    for dlq, sources in dead_letter_feeds(settings.topics, settings.dlq_topic).items():
        count = source_partitions(metadata, sources)
        try:
            ensured = ensure_topic(probe.admin, metadata, dlq, count, KAFKA_TIMEOUT, validate_only=True)
        except TopicCreateError as exc:
            if exc.reason is None:
                details.append(f"{dlq} is absent; the broker did not say within {KAFKA_TIMEOUT:g}s if it may be "
                               "created")
                fixes.append(f"create {dlq} ({count} partitions)")
            else:
                details.append(f"{dlq} is absent and cannot be created: {exc.reason.str()}")
                fixes.append(f"create {dlq} ({count} partitions), or grant this principal CREATE on it")
            continue
        if ensured.created:
            details.append(f"{dlq} is absent: `run` creates it when it starts, with {count} partition(s) "
                           "(the broker confirmed this principal may create it)")
        else:
            details.append(f"{dlq} exists ({ensured.partitions} partitions)")
    text = "; ".join(details)
    if fixes:
        return failed("dead-letter topic", text, f"Dead-letter topic: {'; '.join(fixes)} — without it the first "
                                                 "dead letter stops the consumer (DLQ_TOPIC chooses another name)")
    return passed("dead-letter topic", text)


_COORDINATOR_BUSY = frozenset({KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                               KafkaError.NOT_COORDINATOR})


def describe_group(admin: AdminClient, group: str) -> ConsumerGroupDescription:
    """The group's description. A broker that has just started (or moved the group) answers "coordinator busy"
    for a moment: ask again until KAFKA_TIMEOUT rather than fail a healthy setup."""
    deadline = time.monotonic() + KAFKA_TIMEOUT
    while True:
        try:
            return admin.describe_consumer_groups([group], request_timeout=KAFKA_TIMEOUT)[group].result(
                timeout=RESULT_TIMEOUT)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if not (error.retriable() or error.code() in _COORDINATOR_BUSY) or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def check_consumer_group(probe: KafkaProbe, settings: Settings, sources: dict[str, int]) -> Row:
    """The group's state and how far behind its committed offsets are; never having committed is fine."""
    group = settings.group_id
    offsets = BrokerOffsets(probe.config, group, KAFKA_TIMEOUT)
    try:
        description = describe_group(probe.admin, group)
        keys = [(topic, partition) for topic, count in sources.items() for partition in range(count)]
        committed = {key: offset for key, offset in offsets.committed(keys).items() if offset >= 0}
        ends = offsets.highs(committed)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        fix = (f"grant this principal DESCRIBE and READ on group {group}"
               if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED else "check the broker's logs and retry")
        said = f"{error.name()}: {error.str()}" if error.str().rstrip().endswith(":") else error.str()
        return failed("consumer group", f"{group}: {said}", f"Consumer group: cannot describe {group} "
                                                            f"({said}) — {fix}")
    except TimeoutError:
        return failed("consumer group", f"{group}: no answer within {KAFKA_TIMEOUT:g}s",
                      f"Consumer group: the broker did not describe {group} in time — check the broker's load "
                      "and retry")
    state = ("unknown to the broker yet" if description.state == ConsumerGroupState.DEAD
             else description.state.name.lower().replace("_", " "))
    head = f"{group}: {state}, {len(description.members)} member(s)"
    if not committed:
        return passed("consumer group", f"{head}, no committed offsets (starts at the {settings.auto_offset_reset} "
                                        "offset)")
    lag = sum(partition_lag(committed, ends).values())
    total = sum(sources.values())
    return passed("consumer group", f"{head}, lag {lag:,} over the {len(committed)} of {total} partition(s) "
                                    "with committed offsets")


def _root_cause(exc: BaseException) -> BaseException:
    """requests wraps urllib3 wraps the socket error; the innermost one says what happened."""
    seen = {id(exc)}
    while True:
        reason = getattr(exc, "reason", None)
        inner = (reason if isinstance(reason, BaseException)
                 else exc.args[0] if exc.args and isinstance(exc.args[0], BaseException)
                 else exc.__cause__)
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def check_wigzo(settings: Settings, row: str = "wigzo base url") -> Row:
    """A plain GET of the base URL, TLS verified as the client verifies it: any HTTP answer means it answers."""
    url = settings.wigzo_base_url
    host = urlsplit(url).netloc or url
    started = time.monotonic()

    def fail(detail: str, fix: str) -> Row:
        return failed(row, f"{url}: {detail}", f"Wigzo: {detail} — {fix}")

    try:
        with requests.get(url, timeout=(settings.connect_timeout, settings.read_timeout),
                          verify=settings.ca_bundle or True, allow_redirects=False, stream=True) as response:
            status = response.status_code
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL) as exc:
        return fail(f"not a usable URL ({exc})", "set WIGZO_BASE_URL to an http(s) URL such as https://app.wigzo.com")
    except requests.exceptions.SSLError as exc:
        cause = _root_cause(exc)
        reason = getattr(cause, "verify_message", None) or str(cause)
        return fail(f"TLS verification of {host} failed ({reason})",
                    "set WIGZO_CA_BUNDLE to the CA that signed its certificate (e.g. a proxy that intercepts TLS), "
                    "or fix WIGZO_BASE_URL")
    except requests.exceptions.ConnectTimeout:
        return fail(f"no connection to {host} within {settings.connect_timeout:g}s",
                    "check firewalls/egress rules and proxy settings (HTTPS_PROXY), or raise WIGZO_CONNECT_TIMEOUT")
    except requests.exceptions.ReadTimeout:
        return fail(f"{host} accepted the connection but did not answer within {settings.read_timeout:g}s",
                    "check WIGZO_BASE_URL points at Wigzo, or raise WIGZO_READ_TIMEOUT")
    except requests.exceptions.ConnectionError as exc:
        cause = _root_cause(exc)
        if isinstance(cause, socket.gaierror):
            return fail(f"cannot resolve {urlsplit(url).hostname}", "check WIGZO_BASE_URL and this host's DNS")
        if isinstance(cause, ConnectionRefusedError):
            return fail(f"connection to {host} refused", "check WIGZO_BASE_URL (host and port) and any proxy")
        return fail(f"cannot connect to {host} ({cause})", "check WIGZO_BASE_URL and the network path to it")
    except OSError as exc:  # every other requests error, and an unreadable WIGZO_CA_BUNDLE
        return fail(str(exc), "check WIGZO_BASE_URL and WIGZO_CA_BUNDLE")
    elapsed_ms = (time.monotonic() - started) * 1000
    return passed(row, f"{url} answered HTTP {status} in {elapsed_ms:.0f} ms (any answer counts)")


def check_token(settings: Settings, row: str = "org token") -> Row:
    try:
        settings.require_org_token()
    except ConfigError as exc:
        return failed(row, "WIGZO_ORG_TOKEN is not set", f"Org token: {exc}")
    api = "set" if settings.wigzo_api_token else "not set (optional)"
    return passed(row, f"set, not verified (see below); API token {api}")


def wigzo_rows(settings: Settings) -> list[Row]:
    """The base URL and token of every destination, each named when the config file names several."""
    rows = []
    for name, own in settings.for_destinations():
        suffix = f" ({name})" if settings.destinations else ""
        rows += [check_wigzo(own, f"wigzo base url{suffix}"), check_token(own, f"org token{suffix}")]
    return rows


def run_checks(args: argparse.Namespace) -> tuple[list[Row], Scrubber]:
    settings, configuration = check_configuration(args)
    if settings is None:
        return [configuration, *skipped(CHECKS[1:], "the configuration is invalid")], Scrubber(())
    configure_for(settings)
    scrub = Scrubber(settings.secrets())
    return [configuration, *kafka_rows(settings), *wigzo_rows(settings)], scrub


def kafka_rows(settings: Settings) -> list[Row]:
    try:
        probe = KafkaProbe(settings)
    except KafkaException as exc:  # librdkafka refused a pass-through setting
        error: KafkaError = exc.args[0]
        return [failed("kafka", error.str(), f"Kafka: the client settings are invalid ({error.str()}) — fix the "
                                             "KAFKA_OPT_* / --kafka-config setting it names"),
                *skipped(CHECKS[2:5], "no Kafka client")]
    kafka, metadata = check_kafka(probe, settings)
    if metadata is None:
        return [kafka, *skipped(CHECKS[2:5], "Kafka is unreachable")]
    topics, sources = check_source_topics(settings, metadata)
    return [kafka, topics, check_dead_letter_topic(probe, settings, metadata),
            check_consumer_group(probe, settings, sources)]


def print_report(rows: list[Row], scrub: Scrubber) -> None:
    width = max(len(row.name) for row in rows)
    print(f"{'check':<{width}}  result  detail")
    for row in rows:
        print(scrub(f"{row.name:<{width}}  {row.status:<6}  {row.detail}"))
    print(f"\nNo event was sent to Wigzo. {TOKEN_NOTE}.")
    print(f"\n{LIVE_NOTE}")
    failures = [row for row in rows if row.status == "FAIL"]
    if not failures:
        print(f"All {len(rows)} checks passed.")
        return
    print(f"\n{len(failures)} of {len(rows)} checks failed; to fix:")
    for row in failures:
        print(scrub(f"  {row.fix}"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser)


def main(args: argparse.Namespace) -> int:
    rows, scrub = run_checks(args)
    print_report(rows, scrub)
    return 0 if all(row.status == "PASS" for row in rows) else 1
