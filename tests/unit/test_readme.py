"""The README is the user's manual: every setting the code reads is documented there."""

from __future__ import annotations

from pathlib import Path

from pipeline.cli import COMMANDS
from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_flag() -> None:
    for option in OPTIONS:
        assert f"| `{option.env}` | `{option.flag}` |" in README, option.env
    assert KAFKA_PASSTHROUGH_PREFIX in README


def test_the_two_commands_come_first() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_every_subcommand_is_mentioned() -> None:
    for name in COMMANDS:
        assert f"wigzo-pipeline {name}" in README, name
