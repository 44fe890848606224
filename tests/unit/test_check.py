"""`check` on a broker that has just started: a busy group coordinator is asked again, not reported as a failure;
and its configuration row parses every destination filter."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.config import CONFIG_ENV, KAFKA_PASSTHROUGH_PREFIX, OPTIONS
from pipeline.ops.check import add_arguments, check_configuration, describe_group


class Answer:
    def __init__(self, outcome: Any) -> None:
        self._outcome = outcome

    def result(self, timeout: float) -> Any:
        if isinstance(self._outcome, KafkaError):
            raise KafkaException(self._outcome)
        return self._outcome


class ScriptedAdmin:
    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.asked = 0

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Answer]:
        self.asked += 1
        return {groups[0]: Answer(self.outcomes.pop(0))}


def test_a_loading_coordinator_is_asked_again() -> None:
    admin = ScriptedAdmin(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS),
                          KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE), "described")
    assert describe_group(admin, "g") == "described" and admin.asked == 3  # type: ignore[arg-type]


def test_a_refusal_is_not_asked_again() -> None:
    admin = ScriptedAdmin(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), "described")
    with pytest.raises(KafkaException):
        describe_group(admin, "g")  # type: ignore[arg-type]
    assert admin.asked == 1


NO_DEBUG = '{"title": "no debug", "if": "type = \'track\' and match(event, \'Debug*\')", "actions": [{"type": "DROP"}]}'
OFF = '{"title": "off", "enabled": false, "if": "all", "actions": [{"type": "SAMPLE", "percent": 0.1}]}'


@pytest.fixture
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the flags each test passes count, whatever the shell running the tests exports."""
    for name in list(os.environ):
        if name in {option.env for option in OPTIONS} | {CONFIG_ENV} or name.startswith(KAFKA_PASSTHROUGH_PREFIX):
            monkeypatch.delenv(name)


def configuration(*argv: str) -> tuple[str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    _, row = check_configuration(parser.parse_args(argv))
    return row.status, row.detail


@pytest.mark.usefixtures("no_settings_from_the_environment")
def test_the_configuration_row_says_what_consent_and_the_filters_will_do() -> None:
    assert configuration() == ("PASS", "settings are valid")
    assert configuration("--consent-categories", "Advertising,Analytics", "--filters", f"[{NO_DEBUG}, {OFF}]") == (
        "PASS", "settings are valid; consent required for Advertising, Analytics (an event without a consent "
                "object: deliver); 2 destination filter(s) parsed, 1 enabled ('no debug': DROP)")


@pytest.mark.usefixtures("no_settings_from_the_environment")
def test_a_filter_that_does_not_parse_fails_the_configuration_row_with_its_title_and_column() -> None:
    status, detail = configuration("--filters", f"[{NO_DEBUG.replace(')', '')}]")
    assert status == "FAIL"
    assert "--filters=" in detail and "filter 'no debug': its if does not parse at column 41" in detail
