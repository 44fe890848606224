"""Settings resolve flag > environment > config file > default, bad values fail naming their source, and
secrets stay secret wherever they come from."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from pipeline.config import OPTIONS, ConfigError, Settings, add_options, load_settings
from pipeline.model import Secret
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


@pytest.mark.parametrize(("topics", "dlq_topic", "expected"), [
    (("orders",), "", ["orders.dlq"]),
    (("orders", "clicks", "orders"), "", ["orders.dlq", "clicks.dlq"]),
    (("orders", "^clicks-.*"), "failed", ["failed"]),
])
def test_the_dead_letter_topics_the_sources_write_to(topics: tuple[str, ...], dlq_topic: str,
                                                     expected: list[str]) -> None:
    assert Settings(topics=topics, dlq_topic=dlq_topic).dead_letter_topics() == expected


def test_a_pattern_source_without_dlq_topic_has_no_dead_letter_topic_to_read() -> None:
    with pytest.raises(ConfigError, match=r"name one with DLQ_TOPIC \(--dlq-topic\)"):
        Settings(topics=("^clicks-.*",)).dead_letter_topics()


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


def test_a_shown_default_is_the_default_as_its_variable_would_hold_it() -> None:
    """What the docs show is checked against `shown_default`; this checks `shown_default` against the value. An
    empty default is shown as a word (`unset`, `required`, `system`, `<source topic>.dlq`) and cannot parse."""
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.attr)
        if default:
            assert option.parse(option.shown_default) == default, option.attr


# --- the config file, precedence and secrets from files ---------------------------------------------------------

LAYER_VALUES = {  # what each source sets, and what Settings holds when that source wins
    "flag": ("from-flag", 1, "flag-client"),
    "env": ("from-env", 2, "env-client"),
    "file": ("from-file", 3, "file-client"),
    "default": ("segment-wigzo", 256, None),
}


def _config(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("given", "winner"),
    [
        ((), "default"),
        (("file",), "file"),
        (("env",), "env"),
        (("flag",), "flag"),
        (("env", "file"), "env"),
        (("flag", "file"), "flag"),
        (("flag", "env"), "flag"),
        (("flag", "env", "file"), "flag"),
    ],
)
def test_precedence_is_flag_then_environment_then_file_then_default(
        tmp_path: Path, given: tuple[str, ...], winner: str) -> None:
    group, in_flight, client = LAYER_VALUES["file"]
    config = _config(tmp_path, f'group_id = "{group}"\nmax_in_flight = {in_flight}\n[kafka]\n"client.id" = "{client}"\n'
                     if "file" in given else "")
    argv = ["--config", str(config)]
    if "flag" in given:
        group, in_flight, client = LAYER_VALUES["flag"]
        argv += ["--group-id", group, "--max-in-flight", str(in_flight), "--kafka-config", f"client.id={client}"]
    environ: dict[str, str] = {}
    if "env" in given:
        group, in_flight, client = LAYER_VALUES["env"]
        environ = {"KAFKA_GROUP_ID": group, "WIGZO_MAX_IN_FLIGHT": str(in_flight), "KAFKA_OPT_CLIENT_ID": client}
    settings = load_settings(_args(*argv), environ=environ)
    assert (settings.group_id, settings.max_in_flight, settings.kafka_config.get("client.id")) == LAYER_VALUES[winner]


def test_config_flag_wins_over_config_environment_variable(tmp_path: Path) -> None:
    from_flag = _config(tmp_path, 'group_id = "flag-file"', "flag.toml")
    from_env = _config(tmp_path, 'group_id = "env-file"', "env.toml")
    assert load_settings(_args(), environ={"WIGZO_PIPELINE_CONFIG": str(from_env)}).group_id == "env-file"
    assert load_settings(_args("--config", str(from_flag)),
                         environ={"WIGZO_PIPELINE_CONFIG": str(from_env)}).group_id == "flag-file"


def test_every_command_taking_settings_gets_config() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, {"bootstrap_servers"})  # as reset-offsets does
    assert parser.parse_args(["--config", "c.toml"]).config == "c.toml"


def test_file_values_take_toml_types_and_the_environment_spelling(tmp_path: Path) -> None:
    config = _config(tmp_path, """
        topics = ["orders", "clicks"]
        retry_statuses = [409, 503]
        read_timeout = 2.5
        input_formats = "json,orders=avro"
        [kafka]
        "security.protocol" = "SASL_SSL"
        sasl.mechanisms = "PLAIN"            # bare dotted keys are nested tables in TOML: flattened back
        "fetch.max.bytes" = 1048576
        "enable.partition.eof" = false
        """)
    settings = load_settings(_args("--config", str(config)), environ={})
    assert settings.topics == ("orders", "clicks")
    assert settings.retry_statuses == frozenset({409, 503})
    assert settings.read_timeout == 2.5
    assert settings.input_formats == {"*": "json", "orders": "avro"}
    assert settings.kafka_config == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                                     "fetch.max.bytes": "1048576", "enable.partition.eof": "false"}
    assert load_settings(_args("--config", str(_config(tmp_path, 'topics = "a, b"', "csv.toml"))),
                         environ={}).topics == ("a", "b")


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("wigzo_base_ulr", "wigzo_base_url"), ("KAFKA_TOPICS", "topics"), ("wigzo_org_token_flie", "wigzo_org_token_file"),
     ("kafak", "kafka")],
)
def test_unknown_key_names_file_key_and_closest_setting(tmp_path: Path, key: str, suggestion: str) -> None:
    config = _config(tmp_path, f'{key} = "x"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(_args("--config", str(config)), environ={})
    assert str(error.value) == f"{config}: unknown setting {key!r} (did you mean {suggestion!r}?)"


def test_unknown_key_without_a_close_match_lists_the_settings(tmp_path: Path) -> None:
    config = _config(tmp_path, 'colour = "blue"\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'colour'; the settings are .*wigzo_base_url"):
        load_settings(_args("--config", str(config)), environ={})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_in_flight = 0", "max_in_flight='0' is invalid: must be a positive whole number"),
        ('ordering = "random"', "ordering='random' is invalid: must be one of key, partition"),
        ("group_id = {name = 'a'}", "group_id={'name': 'a'} is invalid: must be a string, a number, a boolean"),
        ("topics = [['a']]", "topics=[['a']] is invalid"),
        ('kafka = "SASL_SSL"', "'kafka' must be a table of librdkafka settings"),
    ],
)
def test_invalid_file_values_name_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    config = _config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(_args("--config", str(config)), environ={})
    assert str(error.value).startswith(f"{config}: ")
    assert needle in str(error.value)


def test_invalid_toml_reports_line_and_column(tmp_path: Path) -> None:
    config = _config(tmp_path, 'group_id = "a"\nmax_in_flight = \n')
    with pytest.raises(ConfigError, match=r"config\.toml: invalid TOML: .*\(at line 2, column \d+\)"):
        load_settings(_args("--config", str(config)), environ={})


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b'group_id = "\xff"\n')
    with pytest.raises(ConfigError, match="invalid TOML: the file is not UTF-8 text"):
        load_settings(_args("--config", str(config)), environ={})


@pytest.mark.parametrize("via_flag", [True, False])
def test_missing_config_file_says_which_source_named_it(tmp_path: Path, via_flag: bool) -> None:
    missing = str(tmp_path / "nope.toml")
    args, environ = (_args("--config", missing), {}) if via_flag else (_args(), {"WIGZO_PIPELINE_CONFIG": missing})
    source = "--config" if via_flag else "WIGZO_PIPELINE_CONFIG"
    with pytest.raises(ConfigError) as error:
        load_settings(args, environ=environ)
    assert str(error.value).startswith(f"{source}={missing!r}: cannot read the config file (No such file or directory)")


def test_wigzo_tokens_from_files(tmp_path: Path) -> None:
    org = _config(tmp_path, "org-s3cret\n", "org")
    api = _config(tmp_path, "api-s3cret\r\n", "api")
    config = _config(tmp_path, f'wigzo_api_token_file = "{api}"\n')
    settings = load_settings(_args("--config", str(config)), environ={"WIGZO_ORG_TOKEN_FILE": str(org)})
    assert settings.wigzo_org_token.reveal() == "org-s3cret"
    assert settings.wigzo_api_token.reveal() == "api-s3cret"
    assert "s3cret" not in repr(settings)


def test_secret_file_in_the_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    config = _config(tmp_path, 'wigzo_org_token = "from-file"\n')
    token = _config(tmp_path, "from-env-file\n", "token")
    settings = load_settings(_args("--config", str(config)), environ={"WIGZO_ORG_TOKEN_FILE": str(token)})
    assert settings.wigzo_org_token.reveal() == "from-env-file"


@pytest.mark.parametrize(
    ("environ", "file_text", "needle"),
    [
        ({"WIGZO_ORG_TOKEN_FILE": "{missing}"}, "",
         "WIGZO_ORG_TOKEN_FILE='{missing}': cannot read the secret file (No such file or directory)"),
        ({"WIGZO_ORG_TOKEN_FILE": "{empty}"}, "", "WIGZO_ORG_TOKEN_FILE='{empty}': the secret file is empty"),
        ({}, 'wigzo_api_token_file = "{missing}"',
         "config.toml: wigzo_api_token_file='{missing}': cannot read the secret file"),
        ({"KAFKA_OPT_SASL_PASSWORD_FILE": "{missing}"}, "", "KAFKA_OPT_SASL_PASSWORD_FILE='{missing}': cannot read"),
        ({"WIGZO_ORG_TOKEN": "s3cret", "WIGZO_ORG_TOKEN_FILE": "{token}"}, "",
         "WIGZO_ORG_TOKEN and WIGZO_ORG_TOKEN_FILE are both set: keep only one of them"),
        ({}, 'wigzo_org_token = "s3cret"\nwigzo_org_token_file = "{token}"',
         "config.toml: wigzo_org_token and wigzo_org_token_file are both set: keep only one of them"),
        ({"KAFKA_OPT_SASL_PASSWORD": "s3cret", "KAFKA_OPT_SASL_PASSWORD_FILE": "{token}"}, "",
         "KAFKA_OPT_SASL_PASSWORD and KAFKA_OPT_SASL_PASSWORD_FILE are both set"),
        ({}, '[kafka]\n"sasl.password_file" = "{token}"\n"sasl.password" = "s3cret"',
         "config.toml: [kafka] sasl.password_file and [kafka] sasl.password are both set"),
        ({}, 'wigzo_org_token = [["s3cret"]]', "config.toml: wigzo_org_token=*** is invalid"),
        ({}, '[kafka]\n"sasl.password" = [["s3cret"]]', "config.toml: [kafka] sasl.password=*** is invalid"),
    ],
)
def test_secret_errors_are_clear_and_never_show_the_secret(
        tmp_path: Path, environ: dict[str, str], file_text: str, needle: str) -> None:
    paths = {"missing": str(tmp_path / "missing"), "empty": str(_config(tmp_path, "\n", "empty")),
             "token": str(_config(tmp_path, "s3cret\n", "token"))}
    config = _config(tmp_path, file_text.format(**paths))
    environ = {name: value.format(**paths) for name, value in environ.items()}
    with pytest.raises(ConfigError) as error:
        load_settings(_args("--config", str(config)), environ=environ)
    assert needle.format(**paths) in str(error.value)
    assert "s3cret" not in str(error.value)


def test_kafka_passwords_are_secret_in_repr_before_the_fix_they_showed() -> None:
    settings = load_settings(environ={"KAFKA_OPT_SASL_PASSWORD": "kafka-pa55"})
    assert "kafka-pa55" not in repr(settings)
    assert settings.kafka_client_config()["sasl.password"] == "kafka-pa55"


@pytest.mark.parametrize("source", ["env", "flag", "file", "env-file", "flag-file", "file-file"])
@pytest.mark.parametrize(
    "name", ["sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "ssl.keystore.password",
             "ssl.key.pem", "sasl.oauthbearer.assertion.private.key.passphrase"])
def test_kafka_secrets_are_typed_secret_from_every_source(tmp_path: Path, source: str, name: str) -> None:
    value = "kafka-s3cret"
    secret_file = _config(tmp_path, f"{value}\n", "secret")
    env_name = "KAFKA_OPT_" + name.upper().replace(".", "_")
    argv: list[str] = []
    environ: dict[str, str] = {}
    file_text = ""
    match source:
        case "env":
            environ[env_name] = value
        case "env-file":
            environ[f"{env_name}_FILE"] = str(secret_file)
        case "flag":
            argv = ["--kafka-config", f"{name}={value}"]
        case "flag-file":
            argv = ["--kafka-config", f"{name}_file={secret_file}"]
        case "file":
            file_text = f'[kafka]\n"{name}" = "{value}"\n'
        case "file-file":
            file_text = f'[kafka]\n"{name}_file" = "{secret_file}"\n'
    config = _config(tmp_path, file_text)
    settings = load_settings(_args("--config", str(config), *argv), environ=environ)
    assert settings.kafka_config == {name: Secret(value)}
    assert isinstance(settings.kafka_config[name], Secret)
    assert value not in repr(settings)
    assert settings.kafka_client_config() == {"bootstrap.servers": settings.bootstrap_servers, name: value}


def test_a_non_secret_librdkafka_setting_ending_in_file_is_passed_through() -> None:
    env = {"KAFKA_OPT_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE": "/keys/assertion.pem"}
    settings = load_settings(_args(), environ=env)
    assert settings.kafka_config == {"sasl.oauthbearer.assertion.private.key.file": "/keys/assertion.pem"}


def test_overridden_secret_file_is_not_read(tmp_path: Path) -> None:
    config = _config(tmp_path, f'wigzo_org_token_file = "{tmp_path / "only-in-production"}"\n')
    settings = load_settings(_args("--config", str(config)), environ={"WIGZO_ORG_TOKEN": "from-env"})
    assert settings.wigzo_org_token.reveal() == "from-env"


# --- privacy: consent categories and destination filters ------------------------------------------------------

NO_DEBUG_JSON = ('[{"title": "no debug", "enabled": true, "if": "type = \\"track\\" and match(event, \\"Debug*\\")", '
                 '"actions": [{"type": "DROP"}]}]')


def test_consent_settings_from_the_environment_and_the_file(tmp_path: Path) -> None:
    settings = load_settings(_args(), environ={"WIGZO_CONSENT_CATEGORIES": "Advertising, Analytics",
                                               "WIGZO_CONSENT_MISSING": "skip"})
    assert (settings.consent_categories, settings.consent_missing) == (("Advertising", "Analytics"), "skip")
    config = _config(tmp_path, 'consent_categories = ["Advertising", "Analytics"]\nconsent_missing = "deliver"\n')
    settings = load_settings(_args("--config", str(config)), environ={})
    assert (settings.consent_categories, settings.consent_missing) == (("Advertising", "Analytics"), "deliver")
    with pytest.raises(ConfigError, match="WIGZO_CONSENT_MISSING='drop' is invalid: must be one of deliver, skip"):
        load_settings(_args(), environ={"WIGZO_CONSENT_MISSING": "drop"})


def test_filters_from_a_json_file_inline_json_or_toml_tables(tmp_path: Path) -> None:
    exported = tmp_path / "filters.json"
    exported.write_text(NO_DEBUG_JSON)
    from_file = load_settings(_args(), environ={"WIGZO_FILTERS": str(exported)}).filters
    assert [one.title for one in from_file] == ["no debug"]
    assert load_settings(_args("--filters", NO_DEBUG_JSON), environ={}).filters == from_file
    config = _config(tmp_path, f"filters = '{exported}'\n")
    assert load_settings(_args("--config", str(config)), environ={}).filters == from_file
    tables = _config(tmp_path, """
[[filters]]
title = "no debug"
enabled = true
if = 'type = "track" and match(event, "Debug*")'
actions = [{type = "DROP"}]
""", name="tables.toml")
    assert load_settings(_args("--config", str(tables)), environ={}).filters == from_file


@pytest.mark.parametrize(("value", "needle"), [
    ('[{"title": "no debug", "if": "type = \\"track\\" and (", "actions": [{"type": "DROP"}]}]',
     "filter 'no debug': its if does not parse at column 21: expected a value"),
    ('[{"title": "x", "if": "all", "actions": [{"type": "KEEP"}]}]', "filter 'x': an action's type must be one of"),
    ("[{", "is invalid: "),
    ("missing-filters.json", "No such file or directory"),
])
def test_a_filter_that_cannot_be_applied_stops_the_start_naming_it(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(_args(), environ={"WIGZO_FILTERS": value})
    assert str(error.value).startswith("WIGZO_FILTERS=") and needle in str(error.value)


def test_a_filter_in_the_config_file_is_named_with_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, '[[filters]]\ntitle = "broken"\nif = "event = "\nactions = [{type = "DROP"}]\n')
    with pytest.raises(ConfigError) as error:
        load_settings(_args("--config", str(config)), environ={})
    assert str(error.value).startswith(f"{config}: filters=")
    assert "filter 'broken': its if does not parse at column 9" in str(error.value)


def test_only_filters_take_tables_in_the_config_file(tmp_path: Path) -> None:
    config = _config(tmp_path, '[[consent_categories]]\nname = "Advertising"\n')
    with pytest.raises(ConfigError, match="must be a string, a number, a boolean or an array of them"):
        load_settings(_args("--config", str(config)), environ={})


# ---- several destinations in one group ------------------------------------------------------------------------

DESTINATIONS = '''
max_in_flight = 32
event_name_map = '{"Signed Up": "signup"}'

[destinations.brand_a]
topics = ["segment-brand-a"]
wigzo_org_token_file = "brand-a-org-token"
event_name_map = '{"Signed Up": "registered"}'

[destinations.brand_b]
topics = ["segment-brand-b", "^segment-brand-b-.*"]
wigzo_base_url = "https://eu.example-wigzo-host"
wigzo_org_token_file = "brand-b-org-token"
'''


def _destinations(tmp_path: Path, text: str = DESTINATIONS, **environ: str) -> Settings:
    (tmp_path / "brand-a-org-token").write_text("token-a\n")
    (tmp_path / "brand-b-org-token").write_text("token-b\n")
    (tmp_path / "config.toml").write_text(text.replace('"brand-', f'"{tmp_path}/brand-'))
    return load_settings(_args("--config", str(tmp_path / "config.toml")), environ=environ)


def test_each_destination_owns_its_topics_and_inherits_what_it_does_not_override(tmp_path: Path) -> None:
    settings = _destinations(tmp_path, WIGZO_CONNECT_TIMEOUT="2")
    assert settings.topics == ("segment-brand-a", "segment-brand-b", "^segment-brand-b-.*"), "the union"
    destinations = dict(settings.for_destinations())
    brand_a, brand_b = destinations["brand_a"], destinations["brand_b"]
    assert (brand_a.topics, brand_b.topics) == (("segment-brand-a",), ("segment-brand-b", "^segment-brand-b-.*"))
    assert (brand_a.wigzo_org_token, brand_b.wigzo_org_token) == (Secret("token-a"), Secret("token-b"))
    assert brand_a.event_name_map == {"Signed Up": "registered"} and brand_b.event_name_map == {"Signed Up": "signup"}
    assert brand_a.wigzo_base_url == "https://app.wigzo.com"
    assert brand_b.wigzo_base_url == "https://eu.example-wigzo-host"
    assert brand_a.max_in_flight == brand_b.max_in_flight == 32 and brand_b.connect_timeout == 2.0
    assert brand_a.secret_files == {"wigzo_org_token": f"{tmp_path}/brand-a-org-token"}
    assert {Secret("token-a"), Secret("token-b")} <= set(settings.secrets()), "every destination's, for scrubbing"
    assert [settings.destination_of(topic) for topic in ("segment-brand-a", "segment-brand-b", "segment-brand-b-eu")
            ] == ["brand_a", "brand_b", "brand_b"]
    settings.require_org_token()


def test_without_destinations_there_is_one_named_default() -> None:
    settings = Settings(topics=("a", "b"))
    assert [(name, own is settings) for name, own in settings.for_destinations()] == [("default", True)]
    assert settings.destination_of("anything") == "default"


@pytest.mark.parametrize(("text", "needle"), [
    ('[destinations.a]\ntopics = ["x", "y"]\n[destinations.b]\ntopics = ["y"]\n',
     "[destinations.a] (y) and [destinations.b] (y) both own topic 'y': a topic belongs to one destination; to "
     "deliver one topic to two Wigzo organizations, run a second consumer group"),
    ('[destinations.a]\ntopics = ["^seg-.*"]\n[destinations.b]\ntopics = ["seg-x"]\n',
     "[destinations.a] (^seg-.*) and [destinations.b] (seg-x) both own topic 'seg-x'"),
    ('[destinations.a]\nwigzo_base_url = "https://x"\n', "[destinations.a] owns no topics"),
    ('[destinations.a]\ntopics = ["x"]\ngroup_id = "g"\n',
     "[destinations.a] group_id: 'group_id' is not a Wigzo setting, so it cannot differ per destination"),
    ('[destinations.a]\ntopics = ["x"]\nwigzo_base_ulr = "g"\n',
     "[destinations.a]: unknown setting 'wigzo_base_ulr' (did you mean 'wigzo_base_url'?)"),
    ('[destinations."a b"]\ntopics = ["x"]\n', "a destination's name is 1 to 64 ASCII letters"),
    ('[destinations.a]\ntopics = ["^(x"]\n', "'^(x' is not a regular expression"),
    ('[destinations.a]\ntopics = ["x"]\nmax_in_flight = 0\n', "[destinations.a] max_in_flight='0' is invalid"),
    ('destinations = "a"\n', "'destinations' is invalid: write each destination as a table"),
])
def test_destination_mistakes_name_the_file_and_the_table(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _destinations(tmp_path, text)
    assert needle in str(raised.value)


def test_topics_belong_to_the_destinations_when_there_are_some(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KAFKA_TOPICS \\(topics\\) is set, and so is \\[destinations\\]"):
        _destinations(tmp_path, KAFKA_TOPICS="segment-events")


def test_two_patterns_matching_one_topic_are_refused_when_it_shows_up(tmp_path: Path) -> None:
    settings = _destinations(tmp_path, '[destinations.a]\ntopics = ["^seg-.*"]\n'
                                       '[destinations.b]\ntopics = ["^.*-x"]\n')
    assert settings.destination_of("seg-y") == "a"
    with pytest.raises(ConfigError, match="topic 'seg-x' is owned by two destinations, 'a' and 'b'"):
        settings.destination_of("seg-x")


def test_a_destination_without_a_token_says_where_to_put_one(tmp_path: Path) -> None:
    settings = _destinations(tmp_path, '[destinations.a]\ntopics = ["x"]\n')
    with pytest.raises(ConfigError, match=r"destination 'a' has no Wigzo org token: set wigzo_org_token_file in its "
                                          r"\[destinations.a\] table"):
        settings.require_org_token()


def test_the_files_settings_were_read_from_are_remembered_for_the_live_reload(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "map.json").write_text("{}")
    settings = _destinations(tmp_path, WIGZO_CA_BUNDLE=str(tmp_path / "ca.pem"), KAFKA_OPT_SASL_PASSWORD_FILE=str(
        tmp_path / "brand-a-org-token"), WIGZO_EVENT_MAP=str(tmp_path / "map.json"))
    read = dict(settings.read_from)
    assert set(read) == {str(tmp_path / name) for name in ("config.toml", "brand-a-org-token", "brand-b-org-token",
                                                            "ca.pem", "map.json")}
    assert all(stamp is not None for stamp in read.values())


def test_every_setting_says_when_a_change_takes_effect() -> None:
    live = {option.attr for option in OPTIONS if option.live}
    assert {"wigzo_org_token", "event_name_map", "ca_bundle", "max_in_flight", "log_level"} <= live
    assert not live & {"bootstrap_servers", "topics", "group_id", "workers", "metrics_port", "dlq_topic"}
    assert {option.attr for option in OPTIONS if option.destination} == live - {"log_level"}
