"""The pure parts of the dead-letter writer: topic-name rules, producer sizing, and what of a letter too large
for its topic is kept."""

from __future__ import annotations

import pytest
from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from pipeline.kafka.dead_letter_headers import (
    HEADER_PREFIX,
    TRUNCATED_HEADER,
    context_headers,
    error_headers,
)
from pipeline.kafka.dead_letters import (
    RECORD_FRAMING,
    Letter,
    cut_to_fit,
    producer_sizing,
    topic_name_problem,
)
from pipeline.model import DeadLetter, Rejection

CONTEXT = [(HEADER_PREFIX + "topic", b"events"), (HEADER_PREFIX + "partition", b"3"),
           (HEADER_PREFIX + "offset", b"41"), (HEADER_PREFIX + "stage", b"decode")]
BROKER_DEFAULT_LIMIT = 1_048_588  # Kafka's message.max.bytes


def _letter(key: bytes | None = b"user-1", value: bytes | None = b"v" * 200_000,
            headers: list[tuple[str, bytes | None]] | None = None) -> Letter:
    return Letter(topic="events.dlq", key=key, value=value, headers=headers or [("trace", b"abc")],
                  context=list(CONTEXT), timestamp=0, stage="decode", destination="default",
                  source=("events", 3, 41), ticket=None)


@pytest.mark.parametrize("name", ["events.dlq", "a", "A-b_c.9", "x" * 249])
def test_legal_topic_names_pass(name: str) -> None:
    assert topic_name_problem(name) is None


@pytest.mark.parametrize(("name", "rule"), [
    ("bad topic name!", "only ASCII letters, digits, '.', '_' and '-'"),
    ("événements", "only ASCII letters"),
    ("x" * 250, "250 characters long, and Kafka allows at most 249"),
    ("", "empty"),
    (".", "'.' or '..'"),
    ("..", "'.' or '..'"),
])
def test_illegal_topic_names_say_which_rule_they_break(name: str, rule: str) -> None:
    problem = topic_name_problem(name)
    assert problem is not None and rule in problem


def test_a_producer_batches_within_the_topic_limit_but_sends_a_larger_letter_alone_for_compression() -> None:
    sizing = producer_sizing(BROKER_DEFAULT_LIMIT)
    assert sizing["batch.size"] <= BROKER_DEFAULT_LIMIT - RECORD_FRAMING
    assert sizing["message.max.bytes"] > BROKER_DEFAULT_LIMIT


@pytest.mark.parametrize("limit", [1, 50, 50_000, BROKER_DEFAULT_LIMIT, 500_000_000, 2**31 - 1])
def test_producer_sizes_stay_within_librdkafka_ranges(limit: int) -> None:
    sizing = producer_sizing(limit)
    assert 1 <= sizing["batch.size"] <= 2**31 - 1
    assert 1000 <= sizing["message.max.bytes"] <= 1_000_000_000


def test_a_cut_letter_keeps_its_context_key_and_headers_and_a_prefix_of_its_value() -> None:
    letter = _letter()
    cut = cut_to_fit(letter, 50_000)

    assert cut.truncated and cut.size() <= 50_000
    assert cut.context == [*CONTEXT, (TRUNCATED_HEADER, b"200000")]
    assert cut.key == b"user-1" and cut.headers == [("trace", b"abc")]
    assert cut.value is not None and letter.value is not None
    assert cut.value == letter.value[:len(cut.value)]
    assert cut.size() == 50_000, "the value fills all the room left"


def test_a_letter_cut_again_keeps_the_original_size_in_its_marker() -> None:
    once = cut_to_fit(_letter(), 50_000)
    twice = cut_to_fit(once, 20_000)
    assert twice.context.count((TRUNCATED_HEADER, b"200000")) == 1
    assert [name for name, _ in twice.context].count(TRUNCATED_HEADER) == 1


def test_a_key_or_headers_too_large_to_fit_are_dropped_before_the_context_is() -> None:
    cut = cut_to_fit(_letter(key=b"k" * 60_000, headers=[("big", b"h" * 60_000)]), 50_000)
    assert cut.key is None and cut.headers == []
    assert cut.context[:len(CONTEXT)] == CONTEXT
    assert cut.size() == 50_000, "the value takes the room of what was dropped"


def test_a_letter_without_a_value_keeps_none() -> None:
    cut = cut_to_fit(_letter(value=None, headers=[("big", b"h" * 60_000)]), 50_000)
    assert cut.value is None and cut.headers == []
    assert dict(cut.context)[TRUNCATED_HEADER] == b"0"


@given(key=st.integers(0, 30_000), value=st.integers(0, 300_000), header=st.integers(0, 30_000),
       limit=st.integers(1_000, 200_000))
def test_a_cut_letter_always_fits_when_its_context_does(key: int, value: int, header: int, limit: int) -> None:
    letter = _letter(key=b"k" * key, value=b"v" * value, headers=[("h", b"h" * header)])
    cut = cut_to_fit(letter, limit)
    assert cut.size() <= limit
    assert cut.context[:len(CONTEXT)] == CONTEXT
    assert dict(cut.context)[TRUNCATED_HEADER] == str(value).encode()


def test_a_redriven_truncated_letter_stays_marked_when_dead_lettered_again() -> None:
    redriven = Message(topic="events", partition=3, offset=41, key=b"k", value=b"{",
                       headers=[(TRUNCATED_HEADER, b"200000"), (HEADER_PREFIX + "attempts", b"1")])
    letter = DeadLetter(Rejection("decode", "InvalidJson", "not JSON"), attempts=1, first_failure=0.0,
                        last_failure=1.0)
    context = error_headers(context_headers(redriven, letter, str, "default"))
    assert context["truncated"] == "200000" and context["attempts"] == "2"


def test_a_whole_letter_carries_no_truncation_marker() -> None:
    record = Message(topic="events", partition=0, offset=1, key=b"k", value=b"{")
    letter = DeadLetter(Rejection("decode", "InvalidJson", "not JSON"), attempts=1, first_failure=0.0,
                        last_failure=1.0)
    assert "truncated" not in error_headers(context_headers(record, letter, str, "default"))


def test_a_letter_names_the_destination_its_topic_belongs_to() -> None:
    record = Message(topic="segment-brand-b", partition=0, offset=1, key=b"k", value=b"{")
    letter = DeadLetter(Rejection("decode", "InvalidJson", "not JSON"), attempts=1, first_failure=0.0,
                        last_failure=1.0)
    assert error_headers(context_headers(record, letter, str, "brand_b"))["destination"] == "brand_b"
