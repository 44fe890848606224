"""The README is the user's manual and the index of docs/: every setting the code reads and every subcommand is
documented there, and every reference document in docs/ is reachable from it."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.cli import COMMANDS
from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"

# a Markdown link target: [text](target) or [text](target#anchor); external links are skipped below
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def relative_links(text: str) -> list[str]:
    return [target for target in LINK.findall(text) if "://" not in target and not target.startswith("mailto:")]


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


def test_every_docs_link_in_the_readme_points_to_a_file() -> None:
    linked = [target for target in relative_links(README) if target.startswith("docs/")]
    assert linked, "the README links no docs/ file"
    for target in linked:
        assert (ROOT / target).is_file(), target


def test_every_docs_file_is_linked_from_the_readme() -> None:
    linked = {target for target in relative_links(README) if target.startswith("docs/")}
    documents = {path.relative_to(ROOT).as_posix() for path in DOCS.glob("*.md")}
    assert documents, "docs/ holds no .md file"
    assert documents <= linked, sorted(documents - linked)


def test_relative_links_in_the_docs_point_to_files() -> None:
    for document in DOCS.glob("*.md"):
        for target in relative_links(document.read_text()):
            assert (document.parent / target).is_file(), f"{document.name}: {target}"
