"""The pipeline against the floors of its HTTP stack and a naive consumer, on real Kafka and the Wigzo sandbox.

    .venv/bin/python bench/pipeline_bench.py                    # 20,000 events, latencies 0,20,150 ms
    .venv/bin/python bench/pipeline_bench.py --smoke            # seconds long: what CI runs

Produces N seeded Segment events (~640 bytes, 5,000 users as keys, all deliverable) to a fresh topic, starts
the sandbox in its own process and, for each Wigzo latency, runs every contender in its own process on the
same events: events/s and delivery latency from the sandbox's clock, CPU ms per 1,000 events and peak RSS
from the kernel (bench/measure.py). bench/README.md says what each figure means and how to read the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
import requests
import urllib3
from floors import FLOORS
from measure import ROOT, delivery_figures, medians, run_processes
from workload import ORG_TOKEN, delete_topics, make_events, prepare_calls

from pipeline.config import CONFIG_ENV, OPTIONS, load_settings
from pipeline.dev.produce_sample import prepare_topic, produce_samples
from pipeline.dev.sandbox import SandboxControl

BENCH = Path(__file__).resolve().parent
IDLE_SECONDS = "2"  # the pipeline's --exit-when-idle: it exits this long after the topic is drained
SMOKE = {"events": 500, "partitions": 2, "latency_ms": "0", "repeat": 1, "naive_cap": 5.0, "timeout": 60.0}


@dataclass(frozen=True, slots=True)
class Bench:
    """What every contender run shares."""

    args: argparse.Namespace
    env: dict[str, str]  # the children's environment: Kafka settings kept, every other pipeline setting dropped
    topic: str
    sandbox_url: str
    sandbox_pid: int
    expected: dict[str, int]  # messageId -> the Wigzo requests its delivery takes, for every deliverable event
    calls_file: Path
    workdir: Path
    supervisor: bool  # `wigzo-pipeline run --workers N` exists


def contenders(workers: int) -> list[str]:
    return [*FLOORS, "naive", "pipeline", *([f"pipeline-x{workers}"] if workers > 1 else [])]


def child_env() -> dict[str, str]:
    """This environment without the pipeline's settings (a WIGZO_PIPELINE_CONFIG or WORKERS set in the shell must
    not change what is measured), except how to reach Kafka: KAFKA_BOOTSTRAP_SERVERS and KAFKA_OPT_*."""
    dropped = {CONFIG_ENV, *(option.env for option in OPTIONS), *(option.env + "_FILE" for option in OPTIONS)}
    dropped.discard("KAFKA_BOOTSTRAP_SERVERS")
    return {key: value for key, value in os.environ.items() if key not in dropped}


def has_workers_option(env: dict[str, str]) -> bool:
    """Whether `wigzo-pipeline run` has its own `--workers N` supervisor; without it pipeline-xN is N processes."""
    help_text = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--help"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60).stdout
    return "--workers" in help_text


def run_contender(bench: Bench, name: str, latency: int, repeat: int) -> dict[str, Any]:
    """One contender, once: its processes from start to exit, then its figures from the sandbox."""
    args = bench.args
    label = f"{name}-{latency}ms-{repeat}"
    group = f"{bench.topic}-{label}"
    result_file = bench.workdir / f"{label}.json"
    common = ["--base-url", bench.sandbox_url, "--result", str(result_file)]
    env = bench.env
    tree = False
    if name in FLOORS:
        commands = [[sys.executable, str(BENCH / "floors.py"), name, "--calls", str(bench.calls_file),
                     "--threads", str(args.in_flight), *common]]
    elif name == "naive":
        commands = [[sys.executable, str(BENCH / "naive.py"), "--topic", bench.topic, "--group", group,
                     "--events", str(args.events), "--cap", str(args.naive_cap), *common]]
    else:
        workers = 1 if name == "pipeline" else args.workers
        env = {**env, "KAFKA_TOPICS": bench.topic, "KAFKA_GROUP_ID": group, "WIGZO_BASE_URL": bench.sandbox_url,
               "WIGZO_ORG_TOKEN": ORG_TOKEN, "WIGZO_MAX_IN_FLIGHT": str(args.in_flight), "METRICS_PORT": "0",
               "LOG_FORMAT": "json"}
        run = [sys.executable, "-m", "pipeline.cli", "run", "--exit-when-idle", IDLE_SECONDS]
        tree = bench.supervisor and workers > 1
        commands = [[*run, "--workers", str(workers)]] if tree else [run] * workers
    logs = [bench.workdir / f"{label}-{index}.log" for index in range(len(commands))]
    sandbox_cpu = _cpu_seconds(bench.sandbox_pid)
    finished = run_processes(commands, env, logs, args.timeout, tree=tree)
    sandbox_cpu = _cpu_seconds(bench.sandbox_pid) - sandbox_cpu
    child: dict[str, Any] = orjson.loads(result_file.read_bytes()) if result_file.exists() else {}
    ready_at = child.get("ready_at") or _first_assignment(logs) or finished.spawned_at
    control = SandboxControl(bench.sandbox_url)
    try:
        figures = delivery_figures(control.received(), bench.expected, ready_at, finished)
    finally:
        control.close()
    capped = bool(child.get("capped"))
    complete = figures["delivered"] == len(bench.expected) and not figures["unexpected"]
    ok = not finished.timed_out and set(finished.exit_codes) == {0} and (capped or complete)
    row = {"contender": name, "latency_ms": latency, "repeat": repeat, "ok": ok, "capped": capped,
           "exit_codes": list(finished.exit_codes), "timed_out": finished.timed_out, "processes": len(commands),
           "events": args.events, "deliverable": len(bench.expected), "read": child.get("read"),
           "failed_requests": child.get("failed"), "first_failure": child.get("first_failure"),
           "sandbox_cpu_s": sandbox_cpu, **figures}
    if not ok:
        tail = b"".join(log.read_bytes()[-1500:] for log in logs if log.exists()).decode(errors="replace")
        print(f"    {name} did not finish cleanly (exit {finished.exit_codes}, timed out {finished.timed_out}, "
              f"delivered {figures['delivered']}/{len(bench.expected)}); its output ends:\n{tail}", flush=True)
    return row


def run_rounds(bench: Bench, names: list[str]) -> list[dict[str, Any]]:
    """Every latency is a round over all contenders, repeated; the sandbox is reset before each contender."""
    rows = []
    control = SandboxControl(bench.sandbox_url)
    try:
        for latency in bench.args.latencies:
            for repeat in range(bench.args.repeat):
                for name in names:
                    control.reset()
                    control.set_faults(latency_ms=latency)
                    row = run_contender(bench, name, latency, repeat)
                    rows.append(row)
                    print(f"  latency {latency} ms, run {repeat + 1}/{bench.args.repeat}, {name}: "
                          f"{row['events_per_s']:,.0f} events/s, {row['delivered']:,}/{len(bench.expected):,} "
                          f"delivered{' (capped)' if row['capped'] else ''}", flush=True)
    finally:
        control.close()
    return rows


def _first_assignment(logs: list[Path]) -> float | None:
    """When the pipeline could start on the backlog: its first `assigned ...` JSON log line (any member)."""
    stamps = []
    for log in logs:
        for line in log.read_bytes().splitlines() if log.exists() else ():
            if line.startswith(b"{") and b'"msg":"assigned ' in line:
                stamps.append(datetime.fromisoformat(orjson.loads(line)["ts"]).timestamp())
    return min(stamps, default=None)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far, from /proc (the sandbox's load during a run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "librdkafka": confluent_kafka.libversion()[0], "confluent_kafka": confluent_kafka.__version__,
            "requests": requests.__version__, "urllib3": urllib3.__version__,
            "load_average_at_start": [round(value, 2) for value in load]}


def announce(info: dict[str, Any], conditions: dict[str, Any]) -> None:
    """The machine and the run's conditions, first thing on the terminal: figures mean nothing without them."""
    print(f"machine: {info['cores']} cores ({info['usable_cores']} usable), Python {info['python']}, librdkafka "
          f"{info['librdkafka']}, load average {info['load_average_at_start']}; {info['platform']}")
    print("conditions: " + ", ".join(f"{key}={value}" for key, value in conditions.items()), flush=True)


@contextmanager
def sandbox_process(env: dict[str, str], *options: str) -> Iterator[tuple[str, int]]:
    """The Wigzo sandbox in a process of its own, so its CPU is not the contender's: its URL and pid, and it is
    stopped on the way out."""
    sandbox = subprocess.Popen([sys.executable, "-m", "pipeline.dev.sandbox", "--host", "127.0.0.1", "--port", "0",
                                "--org-token", ORG_TOKEN, *options], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert sandbox.stdout is not None
        url = sandbox.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"the sandbox did not start (printed {url!r})")
        yield url, sandbox.pid
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=60)


def save(out: Path, info: dict[str, Any], document: dict[str, Any]) -> None:
    """The results as JSON, with the load average at the end beside the one at the start."""
    info["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({**document, "machine": info}, option=orjson.OPT_INDENT_2))
    print(f"\nload average at the end {info['load_average_at_end']}; results: {out}")


def summarize(rows: list[dict[str, Any]], latencies: list[int], names: list[str]) -> list[dict[str, Any]]:
    """Per latency and contender, the medians over the repeats, with events/s relative to session-floor's."""
    summary = []
    for latency in latencies:
        per_contender = {name: medians([r for r in rows if r["latency_ms"] == latency and r["contender"] == name])
                         for name in names}
        floor = per_contender["session-floor"]["events_per_s"]
        for name, figures in per_contender.items():
            ratio = figures["events_per_s"] / floor if floor and figures["events_per_s"] is not None else None
            summary.append({"latency_ms": latency, "contender": name, "x_session_floor": ratio, **figures})
    return summary


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(summary: list[dict[str, Any]], latency: int, args: argparse.Namespace, deliverable: int) -> None:
    print(f"\nWigzo latency {latency} ms: {args.events:,} events ({deliverable:,} deliverable), "
          f"{args.partitions} partitions, in-flight {args.in_flight}; median of {args.repeat} run(s)")
    print(f"{'contender':<15}{'events/s':>10}{'overall/s':>11}{'× floor':>9}{'CPU ms/1k':>11}{'RSS MB':>8}"
          f"{'p50 ms':>9}{'p99 ms':>9}  delivered")
    notes = []
    for row in (r for r in summary if r["latency_ms"] == latency):
        mark = "*" if row["capped"] else ("!" if not row["ok"] else "")
        if row["capped"]:
            notes.append(f"* {row['contender']} stopped at its {args.naive_cap:.0f} s cap; its events/s are "
                         "extrapolated from what it delivered, its latencies cover only those events")
        if not row["ok"]:
            notes.append(f"! {row['contender']} failed or missed events in a run: see the lines above")
        print(f"{row['contender'] + mark:<15}{_number(row['events_per_s']):>10}"
              f"{_number(row['events_per_s_overall']):>11}{_number(row['x_session_floor'], 2):>9}"
              f"{_number(row['cpu_ms_per_1k'], 1):>11}{_number(row['peak_rss_mb'], 1):>8}"
              f"{_number(row['p50_ms']):>9}{_number(row['p99_ms']):>9}  {_number(row['delivered'])}")
    for note in notes:
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events to produce (default 20,000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the fresh topic (default 6)")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users, the message keys (default 5,000)")
    parser.add_argument("--latency-ms", default="0,20,150", help="Wigzo latencies, one round each (default 0,20,150)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each round; the table shows medians")
    parser.add_argument("--in-flight", type=int, default=64,
                        help="WIGZO_MAX_IN_FLIGHT of the pipeline, and the floors' threads (default 64)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes of the pipeline-xN contender; 1 leaves it out (default 2)")
    parser.add_argument("--naive-cap", type=float, default=60.0, help="seconds the naive consumer may run")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any contender run may take")
    parser.add_argument("--seed", type=int, default=7, help="seed of the events")
    parser.add_argument("--filters", type=Path, default=None,
                        help="Segment destination filters every contender applies (WIGZO_FILTERS), e.g. "
                             "bench/filters.json; the floors' calls and the deliverable events follow them")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/<time>.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds long, for CI: 500 events, 2 partitions, latency 0, naive capped at 5 s")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    args.latencies = [int(part) for part in str(args.latency_ms).split(",") if part.strip()]
    if not args.latencies or min(args.latencies) < 0:
        parser.error("--latency-ms needs one or more latencies in milliseconds, e.g. 0,20,150")
    if min(args.events, args.partitions, args.users, args.repeat, args.in_flight, args.workers) < 1:
        parser.error("--events, --partitions, --users, --repeat, --in-flight and --workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a CI timeout) unwinds like Ctrl-C: contenders killed, sandbox stopped, topics deleted
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = datetime.now(UTC)
    out = args.out or BENCH / "results" / f"{started:%Y%m%dT%H%M%SZ}.json"
    env = child_env()
    if args.filters:
        env["WIGZO_FILTERS"] = str(args.filters.resolve())
    settings = load_settings(None, environ=env)
    kafka = settings.kafka_client_config()
    supervisor = has_workers_option(env)
    names = contenders(args.workers)
    events = make_events(args.events, args.users, args.seed)
    calls, expected = prepare_calls(events, settings.filters)
    conditions = {"events": args.events, "deliverable": len(expected), "partitions": args.partitions,
                  "users": args.users, "mean_event_bytes": round(statistics.mean(len(e.value) for e in events)),
                  "latencies_ms": args.latencies, "repeat": args.repeat, "in_flight": args.in_flight,
                  "workers": args.workers, "workers_via": "run --workers" if supervisor else "separate processes",
                  "naive_cap_s": args.naive_cap, "bootstrap": kafka["bootstrap.servers"], "seed": args.seed,
                  "smoke": args.smoke, "contenders": names,
                  "filters": str(args.filters) if args.filters else None}
    info = machine()
    announce(info, conditions)

    topic = f"bench-{started:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    try:
        with sandbox_process(env) as (url, sandbox_pid):
            prepare_topic(kafka, topic, args.partitions)
            produce_samples(kafka, topic, events)
            with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as workdir:
                bench = Bench(args, env, topic, url, sandbox_pid, expected, Path(workdir) / "calls.json",
                              Path(workdir), supervisor)
                bench.calls_file.write_bytes(orjson.dumps(calls))
                rows = run_rounds(bench, names)
    finally:
        delete_topics(kafka, [topic, f"{topic}.dlq"])

    summary = summarize(rows, args.latencies, names)
    for latency in args.latencies:
        print_table(summary, latency, args, len(expected))
    save(out, info, {"started_at": started.isoformat(), "conditions": conditions, "summary": summary, "runs": rows})
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
