"""The console script: help and version everywhere, and a closed pipe is not an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, build_parser, main
from pipeline.ops.redrive import take_old_topic_name

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("wigzo-pipeline ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: wigzo-pipeline" in capsys.readouterr().out


def test_transform_into_a_closed_pipe_exits_quietly() -> None:
    line = b'{"type":"track","event":"Signed Up","messageId":"m-1","userId":"u-1","properties":{}}\n'
    script = (f"{sys.executable} -m pipeline.cli transform | head -c 10 > /dev/null")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], input=line * 20000, cwd=ROOT,
                            capture_output=True, timeout=60, check=False)
    assert b"Traceback" not in result.stderr, result.stderr.decode()[-800:]


# One option per concept wherever topics are named: --topics the source topics, --dlq-topic the dead-letter topic.
@pytest.mark.parametrize("argv", [
    ["run"], ["check"], ["redrive"], ["replay"], ["dlq", "summary"], ["dlq", "show"],
])
def test_topics_are_the_sources_and_dlq_topic_the_dead_letter_topic_in_every_command(argv: list[str]) -> None:
    args = build_parser(argv[0]).parse_args([*argv, "--topics", "orders,clicks", "--dlq-topic", "failed"])
    assert (args.topics, args.dlq_topic) == ("orders,clicks", "failed")


def test_dlq_refuses_the_ambiguous_topic_option_and_says_what_to_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "summary", "--bootstrap-servers", "127.0.0.1:1", "--topic", "segment-events"]) == 2
    err = capsys.readouterr().err
    assert "--topic is ambiguous" in err
    assert "type --topics segment-events" in err and "type --dlq-topic segment-events" in err


def test_redrive_takes_its_old_from_topic_as_the_dead_letter_topic() -> None:
    args = build_parser("redrive").parse_args(["redrive", "--from-topic", "orders.dlq"])
    take_old_topic_name(args)
    assert args.dlq_topic == "orders.dlq"
    agreeing = build_parser("redrive").parse_args(["redrive", "--from-topic", "x.dlq", "--dlq-topic", "x.dlq"])
    take_old_topic_name(agreeing)
    assert agreeing.dlq_topic == "x.dlq"


def test_redrive_refuses_an_old_from_topic_that_disagrees_with_dlq_topic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["redrive", "--from-topic", "a.dlq", "--dlq-topic", "b.dlq"]) == 2
    assert "give the dead-letter topic once, as --dlq-topic" in capsys.readouterr().err
