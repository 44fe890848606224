"""Settings resolve flag > environment > default, and bad values fail with the variable's name."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from pipeline.config import OPTIONS, ConfigError, Settings, add_options, load_settings
from pipeline.wigzo.client import WigzoClient
from pipeline.wigzo.policy import Verdict


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser)
    return parser.parse_args(argv)


def test_defaults_without_environment() -> None:
    settings = load_settings(_args(), environ={})
    assert settings == Settings()
    assert settings.dlq_topic_for("events") == "events.dlq"


def test_environment_then_flag_precedence() -> None:
    env = {"KAFKA_TOPICS": "a, b", "WIGZO_MAX_IN_FLIGHT": "16", "KAFKA_GROUP_ID": "from-env"}
    settings = load_settings(_args("--group-id", "from-flag"), environ=env)
    assert settings.topics == ("a", "b")
    assert settings.max_in_flight == 16
    assert settings.group_id == "from-flag"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WIGZO_MAX_IN_FLIGHT": "0"}, "WIGZO_MAX_IN_FLIGHT='0' is invalid: must be a positive whole number"),
        ({"DELIVERY_ORDERING": "random"}, "DELIVERY_ORDERING='random' is invalid: must be one of key, partition"),
        ({"INPUT_FORMAT": "orders=xml"}, "INPUT_FORMAT='orders=xml' is invalid"),
        ({"WIGZO_EVENT_MAP": '{"a": 1}'}, "WIGZO_EVENT_MAP"),
        ({"KAFKA_AUTO_OFFSET_RESET": "middle"}, "must be one of earliest, latest"),
        ({"WIGZO_RETRY_STATUSES": "429"}, "other than 401, 403 and 429"),
        ({"WIGZO_RETRY_STATUSES": "200,503"}, "must be 4xx/5xx"),
    ],
)
def test_invalid_values_name_their_source(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings(_args(), environ=env)


def test_secrets_never_print() -> None:
    settings = load_settings(_args(), environ={"WIGZO_ORG_TOKEN": "s3cr3t-org", "WIGZO_API_TOKEN": "s3cr3t-api"})
    assert settings.wigzo_org_token.reveal() == "s3cr3t-org"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in f"{settings.wigzo_api_token}"


def test_missing_org_token_says_how_to_fix() -> None:
    with pytest.raises(ConfigError, match="WIGZO_ORG_TOKEN is not set"):
        load_settings(_args(), environ={}).require_org_token()


def test_kafka_passthrough_from_env_and_flags() -> None:
    env = {"KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_OPT_PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky",
           "KAFKA_OPT_SASL_MECHANISMS": "PLAIN"}
    settings = load_settings(_args("--kafka-config", "fetch.max.bytes=1048576"), environ=env)
    assert settings.kafka_config == {
        "security.protocol": "SASL_SSL", "partition.assignment.strategy": "cooperative-sticky",
        "sasl.mechanisms": "PLAIN", "fetch.max.bytes": "1048576",
    }
    assert settings.kafka_client_config()["bootstrap.servers"] == settings.bootstrap_servers


def test_malformed_passthrough_flag() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_settings(_args("--kafka-config", "novalue"), environ={})


def test_per_topic_input_formats() -> None:
    settings = load_settings(_args("--input-format", "json,orders=avro-confluent"), environ={})
    assert settings.input_formats == {"*": "json", "orders": "avro-confluent"}


def test_retry_statuses_reach_the_delivery_policy() -> None:
    settings = load_settings(_args("--retry-statuses", "409, 503", "--wigzo-base-url", "http://127.0.0.1:1"),
                             environ={})
    assert settings.retry_statuses == frozenset({409, 503})
    client = WigzoClient(settings)
    try:
        assert client._policy.classify_status(409) is Verdict.RETRY
        assert client._policy.classify_status(408) is Verdict.PERMANENT
    finally:
        client.close()


def test_every_option_is_a_settings_field_whose_default_applies_when_unset() -> None:
    defaults = Settings()
    names = {f.name for f in fields(Settings)}
    assert {option.attr for option in OPTIONS} <= names
    assert load_settings(None, environ={}) == defaults
