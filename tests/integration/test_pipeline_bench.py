"""bench/pipeline_bench.py --smoke runs end to end on the real broker and sandbox, so the benchmark cannot rot.

Speed is printed, never asserted: figures from a shared CI machine mean nothing, and the lead reads the full
run on a quiet one (bench/README.md). This only checks that every contender ran and delivered, and that the
pipeline delivered every deliverable event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180.0

pytestmark = pytest.mark.slow


def test_the_smoke_benchmark_runs_every_contender_and_the_pipeline_delivers_everything(kafka_bootstrap: str,
                                                                                         tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    # its own session, so a run past the timeout is ended with the sandbox it started
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / "pipeline_bench.py"), "--smoke", "--out", str(out)],
                             cwd=ROOT, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = bench.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        bench.terminate()  # the benchmark cleans up on SIGTERM: contenders, sandbox, topics
        try:
            output, _ = bench.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGKILL)
            output, _ = bench.communicate()
        raise AssertionError(f"the smoke benchmark took more than {TIMEOUT:.0f}s:\n{output[-4000:]}") from None
    assert bench.returncode == 0, output[-4000:]

    results = orjson.loads(out.read_bytes())
    names = results["conditions"]["contenders"]
    assert {"session-floor", "adapter-floor", "urllib3", "naive", "pipeline"} <= set(names)
    summary = results["summary"]
    assert [row["contender"] for row in summary] == names, "one row per contender"
    for row in summary:
        assert row["events_per_s"] > 0, row
    deliverable = results["conditions"]["deliverable"]
    assert deliverable > 0
    for row in summary:
        if row["contender"].startswith("pipeline"):
            assert row["delivered"] == deliverable, row
