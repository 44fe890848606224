"""The naive consumer: the loop everybody writes first, the figure the pipeline must beat by a wide margin.

    python bench/naive.py --topic T --group G --events N --cap SECONDS --base-url URL --result FILE

Run as its own process by bench/pipeline_bench.py: poll one message, decode, decide (the pipeline's own chain),
post with a requests.Session, commit synchronously, repeat. No concurrency, no retries. It stops after N
messages or SECONDS after its partitions were assigned, and writes a small JSON result (when it was
assigned, what it read, sent and failed to send).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import requests
from confluent_kafka import Consumer, TopicPartition
from workload import ORG_TOKEN

from pipeline.config import load_settings
from pipeline.contract.decoder import EventDecoder
from pipeline.model import Deliver, Secret
from pipeline.wigzo.chain import Chain

TIMEOUT = (5.0, 15.0)  # connect, read: the pipeline's defaults
ASSIGNMENT_TIMEOUT = 60.0  # bound on joining the group


def run_naive(topic: str, group: str, events: int, cap: float, base_url: str) -> dict[str, Any]:
    """One message at a time: poll, decode, map, post with a Session, commit synchronously; stops after
    `events` messages or `cap` seconds after its partitions were assigned."""
    settings = dataclasses.replace(load_settings(None), topics=(topic,), group_id=group,
                                   wigzo_base_url=base_url, wigzo_org_token=Secret(ORG_TOKEN))
    decoder, chain = EventDecoder(settings), Chain.from_settings(settings)
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    assigned: list[tuple[float, float]] = []  # (wall clock, monotonic) of the first assignment

    def on_assign(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        if not assigned:
            assigned.append((time.time(), time.monotonic()))

    consumer.subscribe([topic], on_assign=on_assign)
    session = requests.Session()
    read = sent = failed = 0
    first_failure = None
    joining_until = time.monotonic() + ASSIGNMENT_TIMEOUT
    try:
        while read < events and time.monotonic() < (assigned[0][1] + cap if assigned else joining_until):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            read += 1
            event = decoder.decode(message.topic(), message.value())
            decision = chain.decide(event) if isinstance(event, dict) else None
            for request in decision.requests if isinstance(decision, Deliver) else ():
                try:
                    response = session.post(base_url + request.path, params=request.query,
                                            data=orjson.dumps(request.body), timeout=TIMEOUT,
                                            headers={"Content-Type": "application/json", **dict(request.headers)})
                    ok, problem = response.status_code == 200, f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    ok, problem = False, f"{type(exc).__name__}: {exc}"
                sent += ok
                failed += not ok
                first_failure = first_failure or (None if ok else problem)
            consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
    if not assigned:
        raise SystemExit(f"naive: no partition of {topic} assigned within {ASSIGNMENT_TIMEOUT:.0f}s")
    return {"ready_at": assigned[0][0], "read": read, "sent": sent, "failed": failed, "first_failure": first_failure,
            "capped": read < events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="its own consumer group")
    parser.add_argument("--events", required=True, type=int, help="stop after this many messages")
    parser.add_argument("--cap", type=float, default=60.0, help="stop this many seconds after assignment")
    parser.add_argument("--base-url", required=True, help="the Wigzo sandbox")
    parser.add_argument("--result", required=True, type=Path, help="where to write the JSON result")
    args = parser.parse_args()
    result = run_naive(args.topic, args.group, args.events, args.cap, args.base_url)
    args.result.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
