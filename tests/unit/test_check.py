"""`check` on a broker that has just started: a busy group coordinator is asked again, not reported as a failure."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline.ops.check import describe_group


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
