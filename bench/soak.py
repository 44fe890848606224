"""Soak: the pipeline's memory over a long backlog, and the time it takes to drain it.

    .venv/bin/python bench/soak.py                    # 1,000,000 events: about 20 minutes on 2 cores
    .venv/bin/python bench/soak.py --events 20000     # under a minute: does it work

Produces N seeded Segment events (bench/workload.py: all deliverable, one Wigzo request each) to a fresh topic,
starts the sandbox in its own process and runs `python -m pipeline.cli run --exit-when-idle 5` on the backlog, as
a user would. While the pipeline runs it samples the sandbox's accepted count and the pipeline's RSS (VmRSS from
/proc, summed over its processes); at the end: the RSS growth after warm-up, the drain time, CPU, duplicates and
missing events. bench/README.md says what each figure means and how to read them.
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from measure import Finished, run_processes, status_kb
from pipeline_bench import announce, child_env, machine, sandbox_process, save
from workload import ORG_TOKEN, delete_topics, make_events

from pipeline.config import load_settings
from pipeline.dev.produce_sample import prepare_topic, produce_samples
from pipeline.dev.samples import SampleMessage
from pipeline.dev.sandbox import SandboxControl

BENCH = Path(__file__).resolve().parent
IDLE_SECONDS = "5"  # the pipeline's --exit-when-idle: it exits this long after the topic is drained
CHUNK = 50_000  # events generated at a time while producing, so a million never sit in memory at once
PRINT_SECONDS = 30.0  # one progress line this often; every sample is kept
TARGET_GROWTH_PCT = 10.0  # the performance issue's bound on RSS growth after warm-up
# an accepted request in /_sandbox/requests: its fields in the sandbox's order, the sandbox's clock last
ARRIVAL = re.compile(rb'"idempotency_key":"[^"]*","received_at":([0-9.eE+-]+)')
SPAN_BYTES = 64 * 1024  # bytes kept of either end of /_sandbox/requests: several whole requests


@dataclass(frozen=True, slots=True)
class Sample:
    elapsed_s: float  # since the pipeline was started
    delivered: int  # requests the sandbox has accepted so far (one per event)
    rss_kb: int  # VmRSS of the pipeline's processes, summed


class Sampler:
    """`run_processes`' watch: every `every` seconds, the sandbox's accepted count and the pipeline's RSS. Reads
    only counts from the sandbox, so sampling costs the same at the millionth event as at the first."""

    def __init__(self, control: SandboxControl, every: float) -> None:
        self.control = control
        self.every = every
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self.next_sample = self.started + every  # not at 0: the process has barely been forked
        self.next_print = self.started + PRINT_SECONDS

    def __call__(self, pids: set[int]) -> None:
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.next_sample += self.every
        rss = sum(kb for pid in pids if (kb := status_kb(pid, "VmRSS")) is not None)
        if not rss:  # every process has exited: nothing left to measure
            return
        sample = Sample(round(now - self.started, 2), self.control.count(), rss)
        self.samples.append(sample)
        if now >= self.next_print:
            self.next_print += PRINT_SECONDS
            print(f"  {sample.elapsed_s:>6.0f} s  {sample.delivered:>10,} delivered  "
                  f"RSS {sample.rss_kb / 1024:7.1f} MB", flush=True)


def rss_figures(samples: Sequence[Sample], warmup: int) -> dict[str, Any]:
    """RSS levels, each the median of the samples over `warmup` delivered events: from the warm-up on, and over
    the last ones (the idle samples before exit included); growth in % = (end level - warm-up level) / warm-up
    level. A single sample catches a moment (in the first million-event run, one fell in a 15 s dip to 142 MB
    between levels of ~225 MB, when memory went back to the system), so levels are medians; the peak after
    warm-up is reported beside them, with its own growth. None where no sample got to the warm-up."""
    start = next((index for index, sample in enumerate(samples) if sample.delivered >= warmup), None)
    figures: dict[str, Any] = {"warmup_at_s": None, "warmup_delivered": None, "rss_warmup_mb": None,
                               "rss_peak_after_warmup_mb": None, "rss_end_mb": None, "growth_pct": None,
                               "peak_growth_pct": None}
    if start is None:
        return figures
    first = samples[start]
    base = statistics.median(s.rss_kb for s in samples[start:] if s.delivered < first.delivered + max(warmup, 1))
    end = statistics.median(s.rss_kb for s in samples if s.delivered >= samples[-1].delivered - warmup)
    peak = max(sample.rss_kb for sample in samples[start:])
    return figures | {"warmup_at_s": first.elapsed_s, "warmup_delivered": first.delivered,
                      "rss_warmup_mb": base / 1024, "rss_peak_after_warmup_mb": peak / 1024, "rss_end_mb": end / 1024,
                      "growth_pct": (end - base) * 100 / base, "peak_growth_pct": (peak - base) * 100 / base}


def produce(kafka: Mapping[str, str], topic: str, args: argparse.Namespace) -> dict[str, float]:
    """The N events onto the topic, generated CHUNK at a time (each chunk its own seed, serials running on);
    how long it took, and how much of that was generating them."""
    made = {"generate_s": 0.0, "bytes": 0}

    def events() -> Iterator[SampleMessage]:
        for index, first in enumerate(range(0, args.events, CHUNK)):
            began = time.perf_counter()
            chunk = make_events(min(CHUNK, args.events - first), args.users, args.seed + index, first)
            made["generate_s"] += time.perf_counter() - began
            made["bytes"] += sum(len(event.value) for event in chunk)
            yield from chunk

    began = time.perf_counter()
    produce_samples(kafka, topic, events())
    return {"produce_s": time.perf_counter() - began, "generate_s": made["generate_s"],
            "mean_event_bytes": made["bytes"] / args.events}


def delivery_span(url: str) -> tuple[float, float] | None:
    """The sandbox's clock at the first and at the last accepted request, None if there was none. It lists them
    in arrival order; the list is streamed and only its two ends kept, so a million requests cost no memory here."""
    head = tail = b""
    with requests.get(f"{url}/_sandbox/requests", stream=True, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 << 20):
            if len(head) < SPAN_BYTES:
                head += chunk
            tail = tail[-SPAN_BYTES:] + chunk
    first, last = ARRIVAL.search(head), ARRIVAL.findall(tail)
    return (float(first.group(1)), float(last[-1])) if first and last else None


def run_pipeline(args: argparse.Namespace, env: dict[str, str], topic: str, url: str,
                 log: Path) -> tuple[Finished, float, list[Sample]]:
    """The pipeline on the backlog until it exits (or the timeout kills it): what the kernel says, when it
    exited (wall clock) and the samples."""
    env = {**env, "KAFKA_TOPICS": topic, "KAFKA_GROUP_ID": f"{topic}-soak", "WIGZO_BASE_URL": url,
           "WIGZO_ORG_TOKEN": ORG_TOKEN, "METRICS_PORT": "0", "LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "pipeline.cli", "run", "--exit-when-idle", IDLE_SECONDS,
               *(["--workers", str(args.workers)] if args.workers > 1 else [])]
    control = SandboxControl(url)
    try:
        sampler = Sampler(control, args.sample_seconds)
        finished = run_processes([command], env, [log], args.timeout, tree=args.workers > 1, watch=sampler)
        return finished, time.time(), sampler.samples
    finally:
        control.close()


def deliveries(url: str, events: int, finished: Finished, exited_at: float) -> dict[str, Any]:
    """What the sandbox accepted, once the pipeline has exited: delivered, duplicates, missing, the drain time."""
    control = SandboxControl(url)
    try:
        stats, duplicates = control.stats(), control.duplicates()
    finally:
        control.close()
    extra = sum(count - 1 for count in duplicates.values())
    delivered = stats["accepted"] - extra  # distinct idempotency keys: one per event
    span = delivery_span(url)
    drain = span[1] - span[0] if span else None
    return {"delivered": delivered, "duplicates": extra, "missing": events - delivered, "attempts": stats["seen"],
            "drain_s": drain, "events_per_s": (delivered - 1) / drain if drain else None,
            "start_to_first_delivery_s": span[0] - finished.spawned_at if span else None,
            "start_to_last_delivery_s": span[1] - finished.spawned_at if span else None,
            "start_to_exit_s": exited_at - finished.spawned_at}


def _number(value: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def print_summary(result: dict[str, Any], args: argparse.Namespace) -> None:
    growth = result["growth_pct"]  # a verdict only on a complete run: a partial one says little about memory
    verdict = "" if growth is None or not result["ok"] else ("met" if growth < TARGET_GROWTH_PCT else "NOT met")
    print(f"\nsoak: {args.events:,} events, {args.partitions} partitions, {args.workers} worker(s), Wigzo latency "
          f"{args.latency_ms:g} ms; warm-up at {args.warmup:,} delivered")
    print(f"  delivered  {result['delivered']:,} (missing {result['missing']:,}, duplicates "
          f"{result['duplicates']:,}, {result['attempts']:,} attempts); exit codes {result['exit_codes']}"
          f"{', timed out' if result['timed_out'] else ''}")
    print(f"  drain      {_number(result['drain_s'], 1, ' s')} first to last delivery "
          f"({_number(result['events_per_s'])} events/s); {_number(result['start_to_exit_s'], 1, ' s')} "
          f"process start to exit")
    print(f"  CPU        {result['cpu_s']:,.1f} s ({_number(result['cpu_ms_per_1k'], 0)} ms per 1k events)")
    print(f"  RSS        {_number(result['rss_warmup_mb'], 1, ' MB')} at warm-up (median from "
          f"{_number(result['warmup_delivered'])} delivered, {_number(result['warmup_at_s'], 0, ' s')}), "
          f"{_number(result['rss_end_mb'], 1, ' MB')} at the end (median); peak after warm-up "
          f"{_number(result['rss_peak_after_warmup_mb'], 1, ' MB')} ({_number(result['peak_growth_pct'], 1, ' %')}); "
          f"peak of the whole run {result['rss_hwm_mb']:.1f} MB")
    print(f"  growth     {_number(growth, 1, ' %')} after warm-up (target < {TARGET_GROWTH_PCT:g} %"
          f"{': ' + verdict if verdict else ''}); the sandbox held {_number(result['sandbox_rss_mb'], 0, ' MB')}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to produce (default 1,000,000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the fresh topic (default 6)")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users, the message keys (default 5,000)")
    parser.add_argument("--workers", type=int, default=1, help="the pipeline's --workers (default 1)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the sandbox's latency (default 0)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="delivered events after which RSS growth is measured (default 10%% of --events)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the pipeline may run (default 3600)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the events")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if min(args.events, args.partitions, args.users, args.workers) < 1:
        parser.error("--events, --partitions, --users and --workers must be at least 1")
    if args.sample_seconds <= 0 or args.latency_ms < 0:
        parser.error("--sample-seconds must be positive and --latency-ms not negative")
    args.warmup = args.events // 10 if args.warmup is None else args.warmup
    if not 0 <= args.warmup <= args.events:
        parser.error("--warmup must be between 0 and --events")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the pipeline killed, the sandbox stopped, the topics deleted
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = datetime.now(UTC)
    out = args.out or BENCH / "results" / f"soak-{started:%Y%m%dT%H%M%SZ}.json"
    env = child_env()
    kafka = load_settings(None, environ=env).kafka_client_config()
    conditions = {"events": args.events, "partitions": args.partitions, "users": args.users,
                  "workers": args.workers, "latency_ms": args.latency_ms, "sample_seconds": args.sample_seconds,
                  "warmup": args.warmup, "timeout_s": args.timeout, "seed": args.seed,
                  "bootstrap": kafka["bootstrap.servers"]}
    info = machine()
    announce(info, conditions)

    topic = f"soak-{started:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    try:
        with sandbox_process(env, "--latency-ms", str(args.latency_ms)) as (url, sandbox_pid):
            prepare_topic(kafka, topic, args.partitions)
            produced = produce(kafka, topic, args)
            print(f"produced {args.events:,} events ({produced['mean_event_bytes']:.0f} B mean) to {topic} in "
                  f"{produced['produce_s']:.1f} s, {produced['generate_s']:.1f} s of it generating them", flush=True)
            with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
                log = Path(workdir) / "pipeline.log"
                finished, exited_at, samples = run_pipeline(args, env, topic, url, log)
                sandbox_rss = status_kb(sandbox_pid, "VmRSS")
                result = {"exit_codes": list(finished.exit_codes), "timed_out": finished.timed_out,
                          **deliveries(url, args.events, finished, exited_at), "cpu_s": finished.cpu_seconds,
                          **rss_figures(samples, args.warmup), "rss_hwm_mb": finished.peak_rss_kb / 1024,
                          "sandbox_rss_mb": sandbox_rss / 1024 if sandbox_rss else None,
                          "log_bytes": log.stat().st_size}
                result["cpu_ms_per_1k"] = (finished.cpu_seconds * 1e6 / result["delivered"] if result["delivered"]
                                           else None)
                result["ok"] = result["exit_codes"] == [0] and not finished.timed_out and result["missing"] == 0
                if not result["ok"]:
                    print(f"the pipeline did not finish cleanly; its output ends:\n"
                          f"{log.read_bytes()[-3000:].decode(errors='replace')}", flush=True)
    finally:
        delete_topics(kafka, [topic, f"{topic}.dlq"])

    print_summary(result, args)
    save(out, info, {"started_at": started.isoformat(), "conditions": conditions, "produced": produced,
                     "result": result, "samples": samples})
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
