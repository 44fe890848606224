"""The docs agree with the one declaration of the settings (the fields of `pipeline.config.Settings`): the README's
settings table gives every setting's variable, flag and default, docs/configuration.md every config file key and
when a change to it takes effect (live, per destination, or on restart), and neither names a variable, flag or key
the code does not read. A default changed in code fails here until the docs say the same."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from pipeline.config import (
    CONFIG_ENV,
    DESTINATION_TOPICS,
    DESTINATIONS_TABLE,
    KAFKA_PASSTHROUGH_PREFIX,
    KAFKA_TABLE,
    OPTIONS,
    SECRET_FILE_SUFFIX,
)
from pipeline.telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()

BY_ENV = {option.env: option for option in OPTIONS}
BY_FLAG = {option.flag: option for option in OPTIONS}
BY_KEY = {option.attr: option for option in OPTIONS}
SECRET_FILE_ENVS = tuple(f"{option.env}{SECRET_FILE_SUFFIX.upper()}" for option in OPTIONS if option.secret)
SECRET_FILE_KEYS = {f"{option.attr}{SECRET_FILE_SUFFIX}" for option in OPTIONS if option.secret}
FILE_KEYS = set(BY_KEY) | SECRET_FILE_KEYS
DESTINATION_KEYS = ({option.attr for option in OPTIONS if option.destination} | {DESTINATION_TOPICS}
                    | {f"{option.attr}{SECRET_FILE_SUFFIX}" for option in OPTIONS if option.destination and option.secret})
METRIC_SERIES = {family.name + suffix for metric in vars(metrics).values() if isinstance(metric, MetricWrapperBase)
                 for family in metric.describe() for suffix in ("", "_total")}
OTHER_FLAGS = {"--config", "--kafka-config"}  # add_options' flags that are not settings of their own

# the README's rows for what is not a Settings field: variable cell -> flag cell
OTHER_README_ROWS = {
    f"`{KAFKA_PASSTHROUGH_PREFIX}<KEY>`": "`--kafka-config KEY=VALUE`",
    f"`{CONFIG_ENV}`": "`--config FILE`",
    ", ".join(f"`{name}`" for name in SECRET_FILE_ENVS): "—",
    f"`{KAFKA_PASSTHROUGH_PREFIX}<KEY>{SECRET_FILE_SUFFIX.upper()}`": f"`--kafka-config KEY{SECRET_FILE_SUFFIX}=PATH`",
}

CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
FLAG = re.compile(r"--[a-z][a-z-]*")
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9<>]+)+")  # WIGZO_MAX_IN_FLIGHT, KAFKA_OPT_<KEY>
FILE_KEY = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")  # max_in_flight; a bare word is not told from prose


def table(text: str, header: str) -> list[list[str]]:
    """The rows under a Markdown table's header line, as stripped cells; the last cell keeps any `|` it holds."""
    assert f"\n{header}\n" in text, f"no table headed {header}"
    columns = header.count("|") - 1
    lines = text.split(f"\n{header}\n", 1)[1].splitlines()[1:]  # below the |---| line
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|", columns - 1)])
    return rows


def settings_table() -> dict[str, list[str]]:
    """The README's settings table by its variable cell: [flag, default, meaning]."""
    rows = table(README, "| variable | flag | default | meaning |")
    by_variable = {row[0]: row[1:] for row in rows}
    assert len(by_variable) == len(rows), "a variable has two rows in the README's settings table"
    return by_variable


def prose(text: str) -> str:
    return FENCE.sub("", text)


def test_every_setting_has_its_flag_and_default_in_the_readme() -> None:
    rows = settings_table()
    for option in OPTIONS:
        row = rows.get(f"`{option.env}`")
        assert row is not None, f"{option.env} has no row in the README's settings table"
        flag, default, _ = row
        assert flag == f"`{option.flag}`", f"{option.env}: the README gives the flag {flag}, the code {option.flag}"
        assert default.replace("`", "") == option.shown_default, (
            f"{option.env}: the README gives the default {default}, the code `{option.shown_default}`")


def test_the_readme_table_has_no_row_the_code_does_not_read() -> None:
    rows = settings_table()
    unknown = set(rows) - {f"`{option.env}`" for option in OPTIONS} - set(OTHER_README_ROWS)
    assert not unknown, f"the README's settings table documents what the code does not read: {sorted(unknown)}"
    for variable, flag in OTHER_README_ROWS.items():
        assert variable in rows, f"the README's settings table has no row {variable}"
        assert rows[variable][0] == flag, f"{variable}: the README gives {rows[variable][0]}, the code {flag}"


def test_every_config_file_key_is_listed_with_its_variable_and_when_a_change_takes_effect() -> None:
    rows = table(CONFIGURATION, "| key | variable | changes |")
    listed = {key.strip("`"): (variable.strip("`"), when) for key, variable, when in rows}
    assert len(listed) == len(rows), "a key has two rows in docs/configuration.md"
    assert listed == {option.attr: (option.env, option.when) for option in OPTIONS}


def test_the_precedence_example_names_one_setting_and_its_default() -> None:
    rows = table(CONFIGURATION, "| order | source | example |")
    examples = {source: example.strip("`") for _, source, example in rows}
    flag, flag_value = examples["flag"].split(" ")
    env, env_value = examples["environment variable"].split("=")
    key, key_value = examples["config file"].split(" = ")
    option = BY_FLAG[flag]
    assert (BY_ENV[env], BY_KEY[key]) == (option, option)
    assert flag_value == env_value == key_value
    assert examples["default"] == option.shown_default


def test_the_example_config_file_uses_only_known_keys() -> None:
    blocks = re.findall(r"^```toml\n(.*?)^```", CONFIGURATION, re.MULTILINE | re.DOTALL)
    assert blocks, "docs/configuration.md has no example config file"
    for block in blocks:
        document = tomllib.loads(block)
        unknown = set(document) - FILE_KEYS - {KAFKA_TABLE, DESTINATIONS_TABLE}
        assert not unknown, f"the example config file has keys the code does not read: {sorted(unknown)}"
        for name, destination in document.get(DESTINATIONS_TABLE, {}).items():
            assert set(destination) <= DESTINATION_KEYS, f"[{DESTINATIONS_TABLE}.{name}]: {set(destination)}"


def test_configuration_names_only_known_variables_flags_and_keys() -> None:
    for span in CODE_SPAN.findall(prose(CONFIGURATION)):
        if flag := FLAG.match(span):
            assert flag[0] in BY_FLAG or flag[0] in OTHER_FLAGS, f"docs/configuration.md: unknown flag in `{span}`"
        elif (env := ENV_NAME.fullmatch(span.split("=")[0])) and not env[0].startswith(KAFKA_PASSTHROUGH_PREFIX):
            assert env[0] in BY_ENV or env[0] in SECRET_FILE_ENVS or env[0] == CONFIG_ENV, (
                f"docs/configuration.md: unknown variable in `{span}`")
        elif key := FILE_KEY.fullmatch(span.split("=")[0].strip()):
            if key[0].startswith(f"{metrics.PREFIX}_"):
                assert key[0] in METRIC_SERIES, f"docs/configuration.md: no such metric `{span}`"
                continue
            assert key[0] in FILE_KEYS, f"docs/configuration.md: unknown config file key in `{span}`"
