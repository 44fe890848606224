"""How bench/pipeline_bench.py measures a contender: its processes' CPU and memory, and delivery times from the sandbox.

CPU comes from the kernel's rusage of each process (`os.wait4`): all its threads, and the children it reaped
(a supervisor's members), nothing else. Peak RSS is each process's VmHWM from /proc, read while it runs
(every POLL_SECONDS, so growth in its last moments before exit can be missed) and summed over processes and,
for a supervisor, its descendants. Not ru_maxrss: on Linux a child's ru_maxrss is at least the parent's RSS
when it forked, and the benchmark's own process is bigger than a floor.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workload import event_id

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.05
DISCOVER_SECONDS = 1.0  # how often a supervisor's process tree is searched for new members


@dataclass(frozen=True, slots=True)
class Finished:
    """What the kernel says about a contender's processes once they have all exited."""

    exit_codes: tuple[int, ...]
    cpu_seconds: float  # user + system, all processes (and their reaped children)
    peak_rss_kb: int  # summed over processes
    spawned_at: float  # wall clock, just before the first process started
    timed_out: bool


def run_processes(commands: Sequence[Sequence[str]], env: Mapping[str, str], logs: Sequence[Path],
                  timeout: float, tree: bool = False, watch: Callable[[set[int]], None] | None = None) -> Finished:
    """Run `commands` side by side, each logging to its file, until all exit or `timeout` passes (then they are
    killed). `tree`: the processes start children of their own, whose memory counts too. `watch`, if given, is
    called at every poll with the pids watched (exited ones included: their /proc status shows no memory)."""
    spawned_at = time.time()
    processes = []
    for command, log in zip(commands, logs, strict=True):
        with log.open("ab") as out:  # O_APPEND: a supervisor's members write whole lines to the shared file
            processes.append(subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=out, stderr=out,
                                              start_new_session=True))
    deadline = time.monotonic() + timeout
    pending = {process.pid: process for process in processes}
    exits: dict[int, tuple[int, float]] = {}  # pid -> (exit code, cpu seconds)
    peaks: dict[int, int] = {}  # pid -> VmHWM kB, for every process watched
    watched = set(pending)
    next_discovery = 0.0
    timed_out = False
    try:
        while pending:
            if tree and time.monotonic() >= next_discovery:
                watched |= _descendants(set(pending))
                next_discovery = time.monotonic() + DISCOVER_SECONDS
            for pid in watched:
                if (peak := status_kb(pid, "VmHWM")) is not None:
                    peaks[pid] = max(peaks.get(pid, 0), peak)
            if watch:
                watch(watched)
            for pid in list(pending):
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    pending.pop(pid).returncode = code  # reaped here: Popen must not wait for it again
                    exits[pid] = (code, usage.ru_utime + usage.ru_stime)
            if pending and time.monotonic() > deadline and not timed_out:
                timed_out = True
                _kill(pending)
            time.sleep(POLL_SECONDS if pending else 0)
    finally:
        _kill(pending)  # only on an error or Ctrl-C: nothing is left pending otherwise
    ordered = [exits[process.pid] for process in processes]
    return Finished(tuple(code for code, _ in ordered), sum(cpu for _, cpu in ordered), sum(peaks.values()),
                    spawned_at, timed_out)


def _kill(pending: Mapping[int, subprocess.Popen[bytes]]) -> None:
    """SIGKILL the process groups we started (each contender process leads its own session)."""
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def status_kb(pid: int, field: str) -> int | None:
    """A memory figure of /proc/PID/status in kB: VmHWM (peak RSS so far), VmRSS (RSS now); None once the
    process has exited (a zombie has no memory left to show)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith(f"{field}:")), None)
    return int(line.split()[1]) if line else None


def _descendants(roots: set[int]) -> set[int]:
    """Every process alive now whose parent chain leads to one of `roots`."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = set(roots)
    while grown := {pid for pid, parent in parents.items() if parent in found and pid not in found}:
        found |= grown
    return found - roots


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def delivery_figures(received: Sequence[Mapping[str, Any]], expected: Mapping[str, int], ready_at: float,
                     finished: Finished) -> dict[str, Any]:
    """The figures of one contender run from the sandbox's accepted requests.

    An event counts as delivered when the sandbox accepted all its requests, at the time the last arrived.
    events/s: from the first delivery to the last; overall: from spawning the process to the last delivery.
    Latency: from `ready_at` (when the contender could start on the backlog) to the event's delivery."""
    counts: Counter[str] = Counter()
    delivered_at: dict[str, float] = {}
    unexpected = 0
    for request in received:
        event = event_id(request["idempotency_key"])
        if event not in expected:
            unexpected += 1
            continue
        counts[event] += 1
        delivered_at[event] = max(delivered_at.get(event, 0.0), request["received_at"])
    times = sorted(at for event, at in delivered_at.items() if counts[event] >= expected[event])
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    latencies = [max(0.0, at - ready_at) * 1000 for at in times]
    return {
        "delivered": len(times),
        "duplicates": sum(max(0, count - expected[event]) for event, count in counts.items()),
        "unexpected": unexpected,
        "events_per_s": (len(times) - 1) / span if span else 0.0,
        "events_per_s_overall": len(times) / (times[-1] - finished.spawned_at) if times else 0.0,
        "cpu_ms_per_1k": finished.cpu_seconds * 1e6 / len(times) if times else None,
        "cpu_s": finished.cpu_seconds,
        "peak_rss_mb": finished.peak_rss_kb / 1024,
        "p50_ms": percentile(latencies, 0.50) if times else None,
        "p99_ms": percentile(latencies, 0.99) if times else None,
        "ready_after_s": ready_at - finished.spawned_at,
        "first_delivery_after_ready_s": times[0] - ready_at if times else None,
    }


MEDIAN_FIELDS = ("delivered", "events_per_s", "events_per_s_overall", "cpu_ms_per_1k", "peak_rss_mb", "p50_ms",
                 "p99_ms", "ready_after_s")


def medians(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The median of each figure over a contender's repeats (missing figures left out)."""
    summary: dict[str, Any] = {"runs": len(rows), "capped": any(row["capped"] for row in rows),
                               "ok": all(row["ok"] for row in rows)}
    for name in MEDIAN_FIELDS:
        values = [row[name] for row in rows if row.get(name) is not None]
        summary[name] = statistics.median(values) if values else None
    return summary
