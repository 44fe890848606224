"""The console script: help and version everywhere, and a closed pipe is not an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, main

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
