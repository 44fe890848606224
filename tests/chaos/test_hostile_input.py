"""Scenario 5: hostile input interleaved with valid events. No crash; every hostile message is dead-lettered
with its stage and reason (tombstones too: the decoder documents them as `decode` rejections, see
docs/contract.md); every valid one is delivered."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

import orjson

from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.kafka.dead_letter_headers import TRUNCATED_HEADER
from tests.chaos.audit import (
    DELIVER,
    REJECT,
    ResultRow,
    audit,
    dry_run_settings,
    expect,
    report,
)
from tests.chaos.conftest import WigzoFactory
from tests.chaos.harness import API_TOKEN, ORG_TOKEN, Members, Scale, produce
from tests.conftest import TopicFactory

KNOWN_SCHEMA_ID = 1  # in schemas/registry.json
REJECTED_STAGES = {"decode", "validate", "mapping"}


def _event(rng: random.Random, **fields: object) -> dict[str, object]:
    """A valid track event to spoil."""
    event: dict[str, object] = {"type": "track", "event": "Product Added", "userId": f"user-{rng.randrange(50)}",
                                "messageId": f"hostile-{rng.getrandbits(64):016x}", "properties": {"sku": "s-1"},
                                "timestamp": "2026-11-01T00:00:00.000Z"}
    event.update(fields)
    return event


def _json(rng: random.Random, **fields: object) -> bytes:
    return orjson.dumps(_event(rng, **fields))


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# Hostile kinds, each a seeded generator of one message value. Sizes near the broker's limit are few (below).
HOSTILE: dict[str, Callable[[random.Random], bytes | None]] = {
    "tombstone": lambda rng: None,
    "empty": lambda rng: b"",
    "whitespace": lambda rng: b" \n\t ",
    "nul-bytes": lambda rng: b"\x00" * rng.randrange(1, 5),
    "random-bytes": lambda rng: rng.randbytes(rng.randrange(1, 200)),
    "invalid-utf8": lambda rng: _json(rng, event="Product Added").replace(b"Product", b"Pro\xff\xfeduct"),
    "overlong-utf8": lambda rng: _json(rng, userId="u").replace(b'"u"', b'"\xc0\xaf"'),
    "lone-surrogate": lambda rng: _json(rng, userId="SURROGATE").replace(b"SURROGATE", b"\\ud800"),
    "bom-prefixed": lambda rng: b"\xef\xbb\xbf" + _json(rng),
    "truncated-json": lambda rng: (value := _json(rng))[:rng.randrange(1, len(value) - 1)],
    "json-array": lambda rng: b"[" + _json(rng) + b"]",
    "json-scalar": lambda rng: rng.choice([b"null", b"42", b'"an event"', b"true"]),
    "deep-nesting-100": lambda rng: _json(rng, properties={"x": 0}).replace(b'{"x":0}', _nested(100)),
    "deep-nesting-16000": lambda rng: b'{"a":' + b"[" * 16_000 + b"]" * 16_000 + b"}",  # within MAX_EVENT_BYTES
    "wrong-type-userId": lambda rng: _json(rng, userId={"id": 1}),
    "wrong-type-type": lambda rng: _json(rng, type=7),
    "unknown-call-type": lambda rng: _json(rng, type="purchase"),
    "wrong-type-properties": lambda rng: _json(rng, properties="cheap"),
    "wrong-type-timestamp": lambda rng: _json(rng, timestamp=[2026]),
    "wrong-type-event": lambda rng: _json(rng, event=["Product Added"]),
    "wrong-type-messageId": lambda rng: _json(rng, messageId=None),
    "huge-integer": lambda rng: _json(rng, properties={"quantity": 1}).replace(b'"quantity":1', b'"quantity":' +
                                                                                b"9" * 400),
    "unknown-schema-id": lambda rng: b"\x00" + rng.randrange(10_000, 2**31).to_bytes(4, "big") + rng.randbytes(40),
    "known-schema-bad-avro": lambda rng: b"\x00" + KNOWN_SCHEMA_ID.to_bytes(4, "big") + b"\xff" * 30,
    "known-schema-truncated": lambda rng: b"\x00" + KNOWN_SCHEMA_ID.to_bytes(4, "big") + b"\x02",
    "confluent-header-only": lambda rng: b"\x00\x00\x00",
}
LARGE: dict[str, Callable[[random.Random], bytes]] = {
    # a JSON event far over MAX_EVENT_BYTES, whose dead letter still fits the dead-letter topic whole
    "json-1MB": lambda rng: _json(rng, properties={"blob": "x" * 1_030_000}),
    # incompressible bytes at the broker's limit: its dead letter (value + headers) exceeds the topic's limit
    "random-at-broker-limit": lambda rng: rng.randbytes(1_048_400),
}


def hostile_messages(count: int, large: int, rng: random.Random) -> list[SampleMessage]:
    kinds = list(HOSTILE)
    messages = [SampleMessage(rng.choice([None, b"hostile"]), HOSTILE[kinds[n % len(kinds)]](rng),
                              f"hostile:{kinds[n % len(kinds)]}") for n in range(count - large)]
    large_kinds = list(LARGE)
    messages += [SampleMessage(b"hostile", LARGE[large_kinds[n % 2]](rng), f"hostile:{large_kinds[n % 2]}")
                 for n in range(large)]
    return messages


def valid_messages(count: int, topic: str, seed: int) -> list[SampleMessage]:
    """`count` sample events the dry run says are delivered."""
    samples = list(SampleStream(seed=seed).messages(count * 2))
    verdicts = expect(dry_run_settings(topic), topic, (s.value for s in samples))
    valid = [s for s, v in zip(samples, verdicts, strict=True) if v.verdict == DELIVER][:count]
    assert len(valid) == count
    return valid


def interleave(first: list[SampleMessage], second: list[SampleMessage], rng: random.Random) -> Iterator[SampleMessage]:
    """Both lists, each in its own order, merged at random."""
    a, b = iter(first), iter(second)
    left_a, left_b = len(first), len(second)
    while left_a or left_b:
        if rng.random() * (left_a + left_b) < left_a:
            left_a -= 1
            yield next(a)
        else:
            left_b -= 1
            yield next(b)


def test_hostile_messages_are_dead_lettered_with_a_reason_and_valid_ones_delivered(
        kafka_bootstrap: str, make_topic: TopicFactory, wigzo: WigzoFactory, members: Members, scale: Scale) -> None:
    rng = random.Random(5)
    count = scale.events(1500, long=10_000)
    large = scale.events(4, long=20)
    topic = make_topic(partitions=6, prefix="chaos-hostile")
    hostile = hostile_messages(count, large, rng)
    verdicts = expect(dry_run_settings(topic), topic, (m.value for m in hostile))
    not_rejected = Counter(m.kind for m, v in zip(hostile, verdicts, strict=True) if v.verdict != REJECT)
    assert not not_rejected, f"the generator made messages the dry run accepts: {not_rejected}"
    sandbox = wigzo()
    produced = produce(kafka_bootstrap, topic, interleave(hostile, valid_messages(count, topic, seed=55), rng))

    member = members.start("hostile", {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPICS": topic,
                                       "KAFKA_GROUP_ID": f"{topic}-group", "WIGZO_BASE_URL": sandbox.url},
                           "--exit-when-idle", "3")
    assert member.wait(timeout=120 * (3 if scale.long else 1)) == 0, member.tail()

    result = audit(kafka_bootstrap, topic, produced, sandbox)
    hostile_outcomes: Counter[str] = Counter()
    unexplained: list[str] = []
    truncated = 0
    for message, outcome in zip(produced, result.outcome_of, strict=True):
        if not message.kind.startswith("hostile:"):
            assert outcome == "delivered", f"valid {message.kind} at {message.partition}@{message.offset}: {outcome}"
            continue
        hostile_outcomes[outcome] += 1
        letter = result.letters.get((message.partition, message.offset))
        if letter is None:
            continue
        context = letter.context
        truncated += TRUNCATED_HEADER in dict(letter.headers)
        if context.get("stage") not in REJECTED_STAGES or not context.get("class") or not context.get("message"):
            unexplained.append(f"{message.kind}: {context}")
        if message.kind == "hostile:tombstone":
            assert context["class"] == "TombstoneMessage" and letter.value is None
    secrets = members.leaked([ORG_TOKEN, API_TOKEN])
    report(ResultRow.of("5 hostile input", result, None,
                        f"{scale.name}; {count} hostile ({large} of ~1 MB) + {count} valid, 6 partitions, 1 member",
                        truncated_letters=truncated, hostile_kinds=len(HOSTILE) + len(LARGE)))

    assert result.missing == 0, result.missing_examples
    assert hostile_outcomes == {"dead_lettered": count}, hostile_outcomes
    assert not unexplained, unexplained[:5]
    assert result.delivered == count and result.double_outcomes == 0
    assert truncated > 0, "a letter over the topic's limit is stored cut down"
    assert not secrets, secrets
