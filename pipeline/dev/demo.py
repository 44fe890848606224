"""`wigzo-pipeline demo`: the real pipeline, end to end, on the embedded default.

Starts the local Kafka (unless KAFKA_BOOTSTRAP_SERVERS points elsewhere) and the Wigzo sandbox,
produces a seeded sample stream to a fresh 6-partition topic, runs the consumer until the topic is
drained (enforcing consent and two destination filters, as a store moving from Segment would), and reports
what happened to every message, skips by their reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import uuid
from contextlib import closing

import orjson

from pipeline.config import Settings, load_settings
from pipeline.dev.local_kafka import LocalKafka, default_home
from pipeline.dev.produce_sample import prepare_topic, produce_samples
from pipeline.dev.samples import SampleStream
from pipeline.dev.sandbox import SandboxControl, SandboxServer
from pipeline.kafka.assignment import GroupSubscription
from pipeline.kafka.dead_letter_headers import error_headers
from pipeline.kafka.runner import build_pipeline, run_pipeline
from pipeline.kafka.status import Status
from pipeline.model import Secret
from pipeline.ops.inspect_dlq import DeadLetterReader
from pipeline.telemetry.logs import configure_logging
from pipeline.wigzo.filters import describe as describe_filters
from pipeline.wigzo.filters import parse_filters

DEMO_ORG_TOKEN = "demo-org-token"
DEMO_LOG_LEVEL = "WARNING"  # the demo's report is what a person reads: only warnings may interrupt it
# The demo's own default, not WIGZO_MAX_IN_FLIGHT's: that one (256) is sized for Wigzo's ~150 ms answers, while
# the sandbox answers in ~5 ms (--latency-ms), where 64 in flight already allow ~12,800 requests/s.
DEMO_MAX_IN_FLIGHT = 64
# Privacy as a store would carry it over from Segment (docs/privacy.md): Wigzo mapped to the Advertising consent
# category, and two destination filters, one removing a property, one dropping events
DEMO_CONSENT_CATEGORIES = ("Advertising",)
DEMO_FILTERS = parse_filters([
    {"title": "no phone numbers", "enabled": True, "if": "type = 'identify'",
     "actions": [{"type": "DROP_PROPERTIES", "fields": {"traits": ["phone"]}}]},
    {"title": "no cart removals", "enabled": True, "if": "type = 'track' and event = 'Product Removed'",
     "actions": [{"type": "DROP"}]},
])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2000, help="how many sample messages to produce")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the demo topic")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample stream")
    parser.add_argument("--max-in-flight", type=int, default=DEMO_MAX_IN_FLIGHT,
                        help=f"Wigzo requests in flight (default {DEMO_MAX_IN_FLIGHT}: the sandbox answers fast)")
    parser.add_argument("--latency-ms", type=int, default=5, help="the sandbox's simulated Wigzo latency")


def main(args: argparse.Namespace) -> int:
    configure_logging(DEMO_LOG_LEVEL, Settings().log_format)
    started = time.monotonic()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        print(f"Kafka: using {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
    else:
        kafka = LocalKafka(default_home())
        print("Kafka: starting the local KRaft broker (first run downloads it from Maven Central)...")
        bootstrap = kafka.start()
        print(f"Kafka: up at {bootstrap}")

    sandbox = SandboxServer(org_token=DEMO_ORG_TOKEN, faults=None).start()
    control = SandboxControl(sandbox.url)
    control.set_faults(latency_ms=args.latency_ms)
    print(f"Wigzo sandbox: {sandbox.url} (latency {args.latency_ms} ms)")

    topic = f"segment-demo-{uuid.uuid4().hex[:8]}"
    prepare_topic({"bootstrap.servers": bootstrap}, topic, args.partitions)
    samples = list(SampleStream(seed=args.seed).messages(args.events))
    produce_samples({"bootstrap.servers": bootstrap}, topic, samples)
    print(f"Produced {len(samples)} sample messages to {topic} ({args.partitions} partitions): "
          "shopper sessions, Engage audiences, other calls, disabled, invalid and garbage messages, each with "
          "its user's consent")

    settings = dataclasses.replace(
        load_settings(None, environ={}), bootstrap_servers=bootstrap, topics=(topic,),
        group_id=f"demo-{topic}", wigzo_base_url=sandbox.url, wigzo_org_token=Secret(DEMO_ORG_TOKEN),
        max_in_flight=args.max_in_flight, consent_categories=DEMO_CONSENT_CATEGORIES, filters=DEMO_FILTERS)
    print(f"Privacy: consent required for {', '.join(DEMO_CONSENT_CATEGORIES)} (events without a consent object "
          f"are delivered, as Segment does); {describe_filters(DEMO_FILTERS)}")
    pipeline = build_pipeline(settings, GroupSubscription(settings.topics, settings.dlq_topic))
    status = pipeline.status
    run_started = time.monotonic()
    first_read: list[float] = []  # the group join takes a moment; the rate counts from the first message

    def drained() -> bool:
        if not first_read and status.stats.read:
            first_read.append(time.monotonic())
        return status.stats.read >= len(samples) and not status.outstanding()

    run_pipeline(pipeline, settings, stop_when=drained)
    finished = time.monotonic()
    print(f"Consumer joined its group in {first_read[0] - run_started:.1f}s and drained the topic in "
          f"{finished - first_read[0]:.1f}s")
    elapsed = finished - first_read[0]

    _report(status, control, settings.dlq_topic_for(topic), bootstrap, len(samples), elapsed)
    sandbox.stop()
    print(f"\nDemo finished in {time.monotonic() - started:.1f}s. Kafka keeps running; "
          "stop it with: .venv/bin/wigzo-pipeline kafka stop")
    return 0


def _report(status: Status, control: SandboxControl, dlq_topic: str, bootstrap: str, produced: int,
            elapsed: float) -> None:
    totals = status.outcomes.totals()
    print(f"\n== Outcomes ({status.stats.read} read of {produced} produced, "
          f"{status.stats.read / elapsed:,.0f} messages/s) ==")
    print(status.outcomes.report())
    received = control.received()
    print(f"\nThe Wigzo sandbox accepted {len(received)} requests "
          f"({len(control.duplicates())} idempotency keys seen more than once); "
          f"pipeline counted {sum(totals.values())} outcomes for {status.stats.read} messages")
    print("\n== Example Wigzo requests ==")
    shown: set[str] = set()
    for request in received:
        label = request["path"].rsplit("/", 1)[-1] + ":" + str(request["body"].get("eventName", ""))
        if label in shown or len(shown) >= 5:
            continue
        shown.add(label)
        print(f"POST {request['path']}  Idempotency-Key: {request['idempotency_key']}")
        print("  " + orjson.dumps(request["body"]).decode()[:400])
    _show_dead_letters(dlq_topic, bootstrap)


def _show_dead_letters(dlq_topic: str, bootstrap: str, examples: int = 3) -> None:
    """One letter of each of the first `examples` stages, read as `wigzo-pipeline dlq` reads them."""
    print(f"\n== Example dead letters ({dlq_topic}) ==")
    stages: set[str] = set()
    with closing(DeadLetterReader(Settings(bootstrap_servers=bootstrap), dlq_topic)) as reader:
        for message in reader.letters():
            context = error_headers(message.headers())
            if context["stage"] in stages:
                continue
            stages.add(context["stage"])
            print(f"[{context['stage']}] {context['class']}: {context['message'][:160]}")
            print(f"  from {context['topic']}[{context['partition']}]@{context['offset']}, "
                  f"value {str(message.value())[:80]}")
            if len(stages) >= examples:
                return
