"""Scenario 6: configurations that can never work. Wigzo answering 404 to everything (a wrong base URL) or 400 to
everything must not flood the dead-letter topic: after WIGZO_SYSTEMIC_FAILURE_THRESHOLD events failing the same
way (per route) delivery pauses and /readyz says why; once the operator fixes it, everything held is delivered.
An event map that makes the mapping reject every event alike is held the same way, before any request. A
missing topic and an unreachable broker make a batch run exit non-zero with the reason."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.config import Settings
from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import Faults
from tests.chaos.audit import Audit, ResultRow, audit, read_letters, report
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Member,
    Members,
    Scale,
    Wigzo,
    committed_to_end,
    produce,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

THRESHOLD = Settings().systemic_failure_threshold  # the default, which these runs keep
ROUTES = 2  # identify and event: a streak is counted per route, since each answers for itself
EVERYTHING = 10**9  # fail_first_attempts: every attempt of every key
EXIT_BOUND = 60.0  # seconds a batch run that cannot start may take to say so


def _misconfigured(member: Member) -> list[str]:
    status, reasons = member.readyz()
    return reasons if status == 503 and any("misconfigured" in reason for reason in reasons) else []


@dataclass
class Case:
    """One misconfigured Wigzo: how to break it and fix it, and what the run showed."""

    name: str
    topic: str
    sandbox: Wigzo
    base_url: str
    fix: Callable[[], str | None]  # the base URL to restart with, or None when the member recovers by itself
    paused_after_s: float = 0.0
    reasons: list[str] = field(default_factory=list)
    still_paused: bool = False
    resumed_after_s: float | None = None
    exits: list[int] = field(default_factory=list)
    log: str = ""
    failure: BaseException | None = None

    def run(self, kafka_bootstrap: str, members: Members) -> None:
        """A member that cannot deliver runs until /readyz says why; then the fix, and the backlog drains."""
        try:
            group = f"{self.topic}-group"
            settings = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": self.topic,
                        "KAFKA_GROUP_ID": group}
            member = members.start(f"{self.name}-broken", {**settings, "WIGZO_BASE_URL": self.base_url})
            self.paused_after_s = round(wait_for(lambda: bool(_misconfigured(member)), 90,
                                                 f"{self.name}: /readyz 503 saying Wigzo is misconfigured"), 1)
            self.reasons = _misconfigured(member)
            sent = member.requests_sent()
            # held events keep probing, refused the same way: they must not be dead-lettered meanwhile
            wait_for(lambda: member.requests_sent() >= sent + 2, 60, f"{self.name}: two probes while paused")
            self.still_paused = bool(_misconfigured(member))
            restart_url = self.fix()
            if restart_url is None:
                self.resumed_after_s = round(wait_for(lambda: member.readyz()[0] == 200, 60, "resuming"), 1)
                wait_for(lambda: committed_to_end(kafka_bootstrap, group, self.topic), 120, "draining", interval=1.0)
                self.exits.append(stop_member(member))
            else:
                self.exits.append(stop_member(member))
                fixed = members.start(f"{self.name}-fixed", {**settings, "WIGZO_BASE_URL": restart_url},
                                      "--exit-when-idle", "3")
                self.exits.append(fixed.wait(timeout=120))
            self.log = member.output()
        except BaseException as exc:  # noqa: BLE001 - raised again on the test's thread
            self.failure = exc


def _delivery_letters_by_status(result: Audit) -> Counter[str]:
    """Dead letters written because Wigzo refused the event, by the HTTP status they carry."""
    return Counter(letter.context.get("http.status", "") for letter in result.letters.values()
                   if letter.context.get("stage") == "delivery")


@pytest.mark.slow
def test_a_wrong_base_url_or_a_wigzo_refusing_everything_pauses_delivery_instead_of_flooding_the_dlq(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    events = scale.events(600)
    wrong_url = wigzo(faults=Faults(latency_ms=5))
    refusing = wigzo(faults=Faults(latency_ms=5, fail_first_attempts=EVERYTHING, fail_with="400"))
    cases = {
        "404": Case("wrong-url", make_topic(partitions=3, prefix="chaos-wrong-url"), wrong_url, wrong_url.url + "/nope",
                    lambda: wrong_url.url),
        "400": Case("refuse-all", make_topic(partitions=3, prefix="chaos-refuse-all"), refusing, refusing.url,
                    lambda: refusing.control.set_faults(fail_first_attempts=0)),
    }
    produced = {status: produce(kafka_bootstrap, case.topic, SampleStream(seed=60 + n).messages(events))
                for n, (status, case) in enumerate(cases.items())}
    threads = [threading.Thread(target=case.run, args=(kafka_bootstrap, members)) for case in cases.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=400)
    for case in cases.values():
        if case.failure is not None:
            raise AssertionError(f"{case.name}: {case.failure}\n{members.tails()}") from case.failure

    rows, letters = [], {}
    for status, case in cases.items():
        result = audit(kafka_bootstrap, case.topic, produced[status], case.sandbox)
        letters[status] = _delivery_letters_by_status(result)
        how = "WIGZO_BASE_URL = sandbox + '/nope'" if status == "404" else "the sandbox answers every attempt 400"
        fix = "restarted with the right URL" if status == "404" else "fault cleared, resumed by itself"
        rows.append(ResultRow.of(f"6 Wigzo {status} everywhere", result, case.resumed_after_s,
                                 f"{scale.name}; {how}; threshold {THRESHOLD}; /readyz 503 after "
                                 f"{case.paused_after_s} s, then {fix}", delivery_letters=dict(letters[status]),
                                 readyz=case.reasons))
    report(*rows)

    for status, case in cases.items():
        assert case.still_paused, f"{status}: delivery resumed by itself although nothing was fixed"
        assert case.exits and set(case.exits) == {0}, (status, case.exits, members.tails())
        assert set(letters[status]) == {status}, letters
        assert sum(letters[status].values()) <= THRESHOLD * ROUTES, f"{status}: {letters[status]} dead letters"
    assert "WIGZO_BASE_URL looks wrong" in cases["404"].log
    assert "Wigzo refuses every event the same way" in cases["400"].log
    for row in rows:
        assert row.missing == 0, row
        assert row.retry_after_violations == 0
    assert not members.leaked([ORG_TOKEN, API_TOKEN])


def test_an_event_map_the_mapping_rejects_for_every_event_holds_them_instead_of_flooding_the_dlq(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    """Product Viewed mapped to Wigzo's order_completed: no viewed product has an order id, so every one is
    rejected as MissingOrderId. Live, the member goes unready with the reason after THRESHOLD - 1 letters; a batch
    run fails instead of claiming success; the fixed configuration delivers everything held."""
    sandbox = wigzo()
    topic = make_topic(partitions=1, prefix="chaos-mapping-streak")
    viewed = (m for m in SampleStream(seed=66).messages(10**6) if m.kind == "track:Product Viewed")
    produced = produce(kafka_bootstrap, topic, (next(viewed) for _ in range(scale.events(60))))
    settings = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic,
                "KAFKA_GROUP_ID": f"{topic}-group", "WIGZO_BASE_URL": sandbox.url}
    broken = {**settings, "WIGZO_EVENT_MAP": '{"Product Viewed": "order_completed"}'}

    def mapping_held(member: Member) -> list[str]:
        status, reasons = member.readyz()
        return [reason for reason in reasons if status == 503 and "the mapping rejected" in reason]

    live = members.start("mapping-broken-live", broken)
    wait_for(lambda: bool(mapping_held(live)), 90, "/readyz 503 saying the mapping rejects every event alike")
    reasons = mapping_held(live)
    live_exit = stop_member(live)
    after_live = len(read_letters(kafka_bootstrap, f"{topic}.dlq"))
    batch = members.start("mapping-broken-batch", broken, "--exit-when-idle", "2")
    batch_exit = batch.wait(timeout=120)
    after_batch = len(read_letters(kafka_bootstrap, f"{topic}.dlq"))
    fixed = members.start("mapping-fixed", settings, "--exit-when-idle", "2")
    fixed_exit = fixed.wait(timeout=120)
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("6 mapping rejects every event alike", result, None,
                        f"{scale.name}; WIGZO_EVENT_MAP sends Product Viewed to order_completed; threshold "
                        f"{THRESHOLD}; live run, then a batch run, then the fixed map", readyz=reasons,
                        exits=[live_exit, batch_exit, fixed_exit]))

    assert "MissingOrderId at properties.order_id" in reasons[0], reasons
    assert live_exit == 0, live.tail()
    assert after_live == THRESHOLD - 1, f"{after_live} dead letters from the live run"
    assert batch_exit != 0, batch.tail()
    assert "not caught up" in batch.output() and "WIGZO_EVENT_MAP" in batch.output(), batch.tail()
    assert after_batch == 2 * (THRESHOLD - 1), "each run dead-letters no more than the threshold allows"
    assert fixed_exit == 0, fixed.tail()
    assert (result.missing, result.dead_lettered) == (0, after_batch), result
    assert result.delivered == len(produced) - after_batch
    assert not members.leaked([ORG_TOKEN, API_TOKEN])


@pytest.mark.slow
def test_a_missing_topic_or_an_unreachable_broker_fails_a_batch_run_with_the_reason(
        kafka_bootstrap: str, kafka_admin: AdminClient, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    sandbox = wigzo()
    missing = f"chaos-missing-{uuid.uuid4().hex[:8]}"
    unreachable = "127.0.0.1:1"  # a privileged port: nothing listens there, whatever else runs meanwhile
    batch = ("--exit-when-idle", "2", "--startup-timeout", "10")
    common = {"WIGZO_BASE_URL": sandbox.url, "KAFKA_GROUP_ID": f"chaos-batch-{uuid.uuid4().hex[:8]}",
              "KAFKA_OPT_ALLOW_AUTO_CREATE_TOPICS": "false"}
    started = time.monotonic()
    runs = {
        "missing topic": members.start("missing-topic", {**common, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                                         "KAFKA_TOPICS": missing}, *batch),
        "unreachable broker": members.start("unreachable", {**common, "KAFKA_BOOTSTRAP_SERVERS": unreachable,
                                                            "KAFKA_TOPICS": "segment-events"}, *batch),
    }
    try:
        exits = {case: (member.wait(timeout=EXIT_BOUND), round(time.monotonic() - started, 1))
                 for case, member in runs.items()}
    finally:
        leftovers = [t for t in (missing, f"{missing}.dlq") if t in kafka_admin.list_topics(timeout=10).topics]
        if leftovers:
            for future in kafka_admin.delete_topics(leftovers, operation_timeout=30).values():
                future.result(timeout=30)
    report(*(ResultRow.of(f"6 {case}", None, None, f"{scale.name}; batch run, STARTUP_TIMEOUT 10 s",
                          exit_code=code, exited_after_s=seconds) for case, (code, seconds) in exits.items()))

    errors = {case: member.output() for case, member in runs.items()}
    assert all(code == 2 for code, _ in exits.values()), (exits, members.tails())
    assert all(seconds < EXIT_BOUND for _, seconds in exits.values()), exits
    refused = errors["missing topic"]
    assert missing in refused and "no partition of" in refused and "STARTUP_TIMEOUT" in refused, refused[-2000:]
    # the dead-letter topic is checked first, before any partition is awaited
    unreached = errors["unreachable broker"]
    assert f"cannot reach Kafka at {unreachable}" in unreached and "check KAFKA_BOOTSTRAP_SERVERS" in unreached, \
        unreached[-2000:]
    assert unreached.count(f"Connect to ipv4#{unreachable} failed") <= 6, "librdkafka's flood is held back"
    assert sandbox.control.stats()["seen"] == 0
    assert not members.leaked([ORG_TOKEN, API_TOKEN])
