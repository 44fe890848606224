"""Scenario 12: settings changed while events flow, with no restart. A token rotated in Wigzo and in its file; an
event-name map changed on disk; an invalid config file (rejected: the running settings keep delivering); and two
destinations in one group, one of whose tokens Wigzo rejects for a while. No signal is sent: each member notices
the files itself. Each ends with the audit: every message one outcome, missing 0, and nothing dead-lettered at
stage `delivery` (the stream's invalid samples are dead-lettered at decode and validate, as always)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import Faults
from tests.chaos.audit import Audit, ResultRow, audit, dry_run_settings, expect, read_letters, report
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import (
    API_TOKEN,
    ORG_TOKEN,
    Feeder,
    Member,
    Members,
    Produced,
    Scale,
    TrackingProducer,
    Wigzo,
    at_rate,
    committed_to_end,
    stop_member,
)
from tests.conftest import TopicFactory, wait_for

pytestmark = pytest.mark.slow

RATE = 100  # events a second, from a feeder, while settings change
ROTATED = "chaos-org-token-r0tat3d-41"
BRAND_A, BRAND_B = "chaos-brand-a-token-7c1", "chaos-brand-b-token-2e9"
SECRETS = (ORG_TOKEN, API_TOKEN, ROTATED, BRAND_A, BRAND_B)


def write_atomically(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    staged.write_text(text)
    staged.replace(path)


class Flow:
    """A feeder producing the sample stream to `topic` at RATE for `seconds`, before, while and after settings
    change."""

    def __init__(self, bootstrap: str, topic: str, seed: int, seconds: float) -> None:
        self.total, self.seconds = int(RATE * seconds), seconds
        self.feeder = Feeder(TrackingProducer(bootstrap, topic), iter(SampleStream(seed=seed).messages(self.total)),
                             at_rate(RATE, self.total))
        self.feeder.start()

    def finish(self) -> list[Produced]:
        """Once all of it is produced."""
        wait_for(lambda: self.feeder.sent >= self.total, self.seconds + 30, "the whole flow produced")
        return self.feeder.finish()


def first_accepted(wigzo: Wigzo, since: float, accepted: Callable[[dict[str, object]], bool]) -> float | None:
    times = [float(r["received_at"]) for r in wigzo.control.received() if accepted(r)]
    later = [t for t in times if t >= since]
    return min(later) - since if later else None


def no_rebalance(member: Member) -> bool:
    """Assigned once, never revoked or lost, before it was told to stop."""
    lines = member.stderr_path.read_text().splitlines()
    running = lines[:next((n for n, line in enumerate(lines) if '"signal 15' in line), len(lines))]
    return (sum('"msg":"assigned ' in line for line in running) == 1
            and not any('"msg":"revoking ' in line or '"msg":"lost ' in line for line in running))


def check(result: Audit, members: Members) -> None:
    assert result.missing == 0, result.missing_examples
    assert result.double_outcomes == 0 and result.letter_repeats == 0
    delivery_letters = [letter.context for letter in result.letters.values() if letter.context["stage"] == "delivery"]
    assert delivery_letters == [], "nothing dead-lettered because settings changed"
    assert members.leaked(SECRETS) == []


def base_settings(bootstrap: str, topic: str, wigzo: Wigzo) -> dict[str, str | None]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": f"{topic}-group",
            "WIGZO_BASE_URL": wigzo.url, "WIGZO_MAX_IN_FLIGHT": "16"}


def test_a_token_rotated_in_wigzo_and_in_its_file(kafka_bootstrap: str, make_topic: TopicFactory,
                                                  wigzo: WigzoFactory, members: Members, scale: Scale,
                                                  tmp_path: Path) -> None:
    sandbox = wigzo(faults=Faults(latency_ms=5))
    topic = make_topic(partitions=6, prefix="chaos-rotate")
    token_file = tmp_path / "org-token"
    token_file.write_text(ORG_TOKEN + "\n")
    member = members.start("rotating", {**base_settings(kafka_bootstrap, topic, sandbox), "WIGZO_ORG_TOKEN": None,
                                        "WIGZO_ORG_TOKEN_FILE": str(token_file)})
    flow = Flow(kafka_bootstrap, topic, seed=81, seconds=scale.seconds(12))
    wait_for(lambda: sandbox.control.count() >= RATE, 60, "deliveries with the first token")
    sandbox.control.set_org_tokens(ROTATED)  # rotated in Wigzo: the old token is refused from now on
    wait_for(lambda: any("auth_failed" in reason for reason in member.readyz()[1]), 30, "the member pausing")
    rewritten = time.time()
    write_atomically(token_file, ROTATED + "\n")  # ... and in the Secret, no signal sent
    wait_for(lambda: first_accepted(sandbox, rewritten, lambda r: r["org_token"] == ROTATED) is not None, 30,
             "a request accepted with the new token")
    recovered = first_accepted(sandbox, rewritten, lambda r: r["org_token"] == ROTATED)
    produced = flow.finish()
    wait_for(lambda: committed_to_end(kafka_bootstrap, f"{topic}-group", topic), 120, "draining", interval=1.0)
    assert stop_member(member) == 0
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    report(ResultRow.of("12 token rotated in its file", result, recovered,
                        f"{RATE} events/s, 1 member; Wigzo refuses the old token, the member pauses, the token file "
                        "is rewritten (no signal); recovery = rewrite to the first request accepted with the new "
                        "token", no_rebalance=no_rebalance(member)))
    check(result, members)
    assert no_rebalance(member)


def test_an_event_name_map_changed_on_disk(kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory,
                                           members: Members, scale: Scale, tmp_path: Path) -> None:
    sandbox = wigzo(faults=Faults(latency_ms=5))
    topic = make_topic(partitions=6, prefix="chaos-remap")
    event_map = tmp_path / "event-map.json"
    event_map.write_text('{"Product Added": "addtocart"}')
    member = members.start("remapping", {**base_settings(kafka_bootstrap, topic, sandbox),
                                         "WIGZO_EVENT_MAP": str(event_map)})
    flow = Flow(kafka_bootstrap, topic, seed=82, seconds=scale.seconds(12))
    wait_for(lambda: sandbox.control.count() >= 2 * RATE, 60, "deliveries with the first map")
    rewritten = time.time()
    write_atomically(event_map, '{"Product Added": "cart_add"}')

    def renamed(record: dict[str, object]) -> bool:
        return record["body"].get("eventName") == "cart_add"  # type: ignore[attr-defined]

    wait_for(lambda: first_accepted(sandbox, rewritten, renamed) is not None, 30, "the new name in use")
    recovered = first_accepted(sandbox, rewritten, renamed)
    produced = flow.finish()
    wait_for(lambda: committed_to_end(kafka_bootstrap, f"{topic}-group", topic), 120, "draining", interval=1.0)
    assert stop_member(member) == 0
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    names = [(r["received_at"], r["body"]["eventName"]) for r in sandbox.control.received()
             if r["body"].get("eventName") in ("addtocart", "cart_add")]
    last_old = max(t for t, name in names if name == "addtocart")
    first_new = min(t for t, name in names if name == "cart_add")
    report(ResultRow.of("12 event-name map changed on disk", result, recovered,
                        f"{RATE} events/s, 1 member; the map's file rewritten (no signal); recovery = rewrite to the "
                        "first request with the new name", no_rebalance=no_rebalance(member),
                        old_name=sum(name == "addtocart" for _, name in names),
                        new_name=sum(name == "cart_add" for _, name in names)))
    check(result, members)
    assert last_old - first_new < 1.0, "only events read before the reload keep the old name"
    assert no_rebalance(member)


def test_an_invalid_config_file_is_rejected_while_the_running_settings_deliver(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale,
        tmp_path: Path) -> None:
    sandbox = wigzo(faults=Faults(latency_ms=5))
    topic = make_topic(partitions=6, prefix="chaos-invalid")
    config = tmp_path / "config.toml"
    valid = "max_attempts = 10\nread_timeout = 5\n"
    config.write_text(valid)
    member = members.start("rejecting", {**base_settings(kafka_bootstrap, topic, sandbox),
                                         "WIGZO_PIPELINE_CONFIG": str(config)})
    flow = Flow(kafka_bootstrap, topic, seed=83, seconds=scale.seconds(12))
    wait_for(lambda: sandbox.control.count() >= RATE, 60, "deliveries")
    write_atomically(config, valid.replace("max_attempts = 10", "max_attempts = -3"))
    wait_for(lambda: "settings reload" in member.output() and "rejected" in member.output(), 15,
             "the invalid file rejected")
    at_rejection = sandbox.control.count()
    wait_for(lambda: sandbox.control.count() >= at_rejection + RATE, 30, "deliveries going on")
    write_atomically(config, valid)  # fixed
    produced = flow.finish()
    wait_for(lambda: committed_to_end(kafka_bootstrap, f"{topic}-group", topic), 120, "draining", interval=1.0)
    assert stop_member(member) == 0
    result = audit(kafka_bootstrap, topic, produced, sandbox)
    errors = [line for line in member.output().splitlines() if '"level":"ERROR"' in line]
    report(ResultRow.of("12 invalid config file rejected", result, None,
                        f"{RATE} events/s, 1 member; max_attempts = -3 written to the config file, then fixed",
                        no_rebalance=no_rebalance(member), errors=len(errors)))
    check(result, members)
    assert len(errors) == 1 and f"{config}: max_attempts='-3' is invalid" in errors[0]
    assert no_rebalance(member)


def test_two_destinations_one_of_whose_tokens_is_rejected_for_a_while(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale,
        tmp_path: Path) -> None:
    sandbox = wigzo(faults=Faults(latency_ms=5), org_tokens=(BRAND_A, BRAND_B))
    topics = {"brand_a": make_topic(partitions=3, prefix="chaos-brand-a"),
              "brand_b": make_topic(partitions=3, prefix="chaos-brand-b")}
    tokens = {"brand_a": BRAND_A, "brand_b": BRAND_B}
    tables = []
    for name, topic in topics.items():
        (tmp_path / name).write_text(tokens[name] + "\n")
        tables.append(f'[destinations.{name}]\ntopics = ["{topic}"]\nwigzo_org_token_file = "{tmp_path / name}"\n')
    config = tmp_path / "config.toml"
    config.write_text("\n".join(tables))
    group = f"chaos-destinations-{uuid.uuid4().hex[:6]}"
    member = members.start("destinations", {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_GROUP_ID": group, "WIGZO_BASE_URL": sandbox.url,
        "WIGZO_MAX_IN_FLIGHT": "16", "WIGZO_ORG_TOKEN": None, "WIGZO_PIPELINE_CONFIG": str(config)})
    flows = {name: Flow(kafka_bootstrap, topic, seed=84 + n, seconds=scale.seconds(14))
             for n, (name, topic) in enumerate(topics.items())}
    wait_for(lambda: sandbox.control.count() >= 2 * RATE, 60, "both destinations delivering")
    sandbox.control.set_org_tokens(BRAND_A)  # brand_b's token rejected
    wait_for(lambda: any("Wigzo (brand_b): auth_failed" in reason for reason in member.readyz()[1]), 30,
             "brand_b pausing, named in /readyz")
    outage = time.time()
    before = {name: sum(r["org_token"] == token for r in sandbox.control.received()) for name, token in tokens.items()}
    wait_for(lambda: sum(r["org_token"] == BRAND_A for r in sandbox.control.received())
             >= before["brand_a"] + scale.seconds(4) * RATE, 60, "brand_a delivering while brand_b is paused")
    during = {name: sum(r["org_token"] == token for r in sandbox.control.received()) - before[name]
              for name, token in tokens.items()}
    fixed = time.time()
    sandbox.control.set_org_tokens(BRAND_A, BRAND_B)  # fixed in Wigzo
    wait_for(lambda: first_accepted(sandbox, fixed, lambda r: r["org_token"] == BRAND_B) is not None, 30,
             "brand_b resuming")
    recovered = first_accepted(sandbox, fixed, lambda r: r["org_token"] == BRAND_B)
    produced = {name: flow.finish() for name, flow in flows.items()}
    for topic in topics.values():
        wait_for(lambda: committed_to_end(kafka_bootstrap, group, topic), 120, "draining", interval=1.0)
    assert stop_member(member) == 0
    results = {name: audit(kafka_bootstrap, topics[name], produced[name], sandbox,
                           letters=read_letters(kafka_bootstrap, f"{topics[name]}.dlq")) for name in topics}
    for name, result in results.items():
        report(ResultRow.of(f"12 two destinations, {name}", result, recovered if name == "brand_b" else None,
                            f"{RATE} events/s to each; brand_b's token rejected for {fixed - outage:.1f} s; recovery "
                            "= the fix in Wigzo to brand_b's first accepted request",
                            accepted_during_the_outage=during[name], no_rebalance=no_rebalance(member)))
    for name, result in results.items():
        check(result, members)
        assert {letter.context["destination"] for letter in result.letters.values()} <= {name}
    assert during["brand_a"] >= scale.seconds(4) * RATE and during["brand_b"] == 0
    by_key = {r["idempotency_key"]: r["org_token"] for r in sandbox.control.received()}
    for name, result in results.items():
        carried = {by_key[key] for outcome, p in zip(result.outcome_of, produced[name], strict=True)
                   if outcome == "delivered" for key in _keys_of(topics[name], p)}
        assert carried == {tokens[name]}, f"{name}'s events carried {carried}"
    assert no_rebalance(member)


def _keys_of(topic: str, produced: Produced) -> tuple[str, ...]:
    """The Idempotency-Keys a produced message maps to, as the audit's dry run says."""
    (expected,) = expect(dry_run_settings(topic), topic, [produced.value])
    return expected.keys
