"""The production path stays lean: `wigzo-pipeline run` loads no development tooling."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import sys
from pipeline.cli import main
code = main(["run", "--bootstrap-servers", "127.0.0.1:1"])
print(code)
print(" ".join(sorted(name for name in sys.modules if name.startswith("pipeline"))))
"""


def test_run_imports_no_development_tooling() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WIGZO_", "KAFKA_"))}
    result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    code, modules = result.stdout.splitlines()[-2:]
    loaded = set(modules.split())
    assert code == "2", "without a token `run` stops at its configuration check, after importing everything it uses"
    assert {"pipeline.ops.run", "pipeline.ops.member", "pipeline.kafka.pipeline", "pipeline.wigzo.client"} <= loaded
    assert not {name for name in loaded if name.startswith("pipeline.dev")}, loaded


def test_the_workers_supervisor_loads_neither_kafka_nor_http() -> None:
    """It only starts, watches and restarts members: each member loads the pipeline in its own process."""
    script = ("import sys, pipeline.ops.run, pipeline.ops.supervisor; "
              "print(' '.join(sorted(m for m in ('confluent_kafka', 'requests', 'fastavro', 'pipeline.kafka.pipeline') "
              "if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == ""
