"""What destination filters cost: the filter step alone, on the benchmark's events, one core.

    .venv/bin/python bench/bench_filters.py                       # bench/filters.json (ten filters), 20,000 events
    .venv/bin/python bench/bench_filters.py --filters my-filters.json --events 50000

The events are pipeline_bench.py's (workload.py), decoded once before the clock starts. Timed, each best of
--repeat passes over all of them: the filter step alone (every filter's `if` evaluated, the actions applied),
the mapping alone, and the chain with and without the filters, so the step's cost reads against the work it
sits beside. bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from workload import ORG_TOKEN, make_events

from pipeline.config import Settings
from pipeline.contract.decoder import EventDecoder
from pipeline.model import Secret, Skip
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.filters import DestinationFilters, parse_filters

BENCH = Path(__file__).resolve().parent


def best_rate(step: Callable[[dict[str, Any]], Any], events: list[dict[str, Any]], repeat: int) -> float:
    """Events per second of the fastest of `repeat` passes (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        for event in events:
            step(event)
        best = min(best, time.perf_counter() - started)
    return len(events) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=Path, default=BENCH / "filters.json", help="the filters (JSON)")
    parser.add_argument("--events", type=int, default=20_000, help="benchmark events (default 20,000)")
    parser.add_argument("--users", type=int, default=5_000, help="distinct users (default 5,000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per figure; the best counts (default 5)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the events")
    args = parser.parse_args()

    filters = parse_filters(orjson.loads(args.filters.read_bytes()))
    plain = Settings(wigzo_org_token=Secret(ORG_TOKEN))
    decoder = EventDecoder(plain)
    events = [decoder.decode("bench", sample.value) for sample in make_events(args.events, args.users, args.seed)]
    assert all(isinstance(event, dict) for event in events), "the benchmark's events all decode"
    step = DestinationFilters(filters)
    without, with_filters = Chain.from_settings(plain), Chain.from_settings(replace(plain, filters=filters))
    skipped = Counter(result.reason for result in map(step, events) if isinstance(result, Skip))

    figures = {
        "filter step alone": best_rate(step, events, args.repeat),
        "mapping alone": best_rate(without.mapping, events, args.repeat),
        "chain without filters": best_rate(without.decide, events, args.repeat),
        "chain with the filters": best_rate(with_filters.decide, events, args.repeat),
    }
    print(f"{len(events):,} events, {len(filters)} filters from {args.filters.name}, best of {args.repeat}; "
          f"the filters skip {sum(skipped.values()):,} ({dict(skipped)})")
    for name, rate in figures.items():
        print(f"  {name:<24} {rate:>10,.0f} events/s  {1e6 / rate:>6.1f} µs/event")


if __name__ == "__main__":
    main()
