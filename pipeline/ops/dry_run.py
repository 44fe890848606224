"""`wigzo-pipeline transform [FILE]`: print what Wigzo would receive for each Segment event, sending nothing.

It runs the consumer's own decoder and chain (pipeline.wigzo.chain) with the same settings, so a dry run
cannot disagree with production; with consent or destination filters set, each line also says which of them
decided and why (`privacy`). The organization token is not required: tokens are always shown as ``***``. With
several Wigzo destinations (`[destinations.NAME]`), `--destination NAME`, or `--topic T` (the destination owning
that topic), picks whose settings the events go through.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import IO, Any
from urllib.parse import urlencode

import orjson

from pipeline import config
from pipeline.config import ConfigError, Settings
from pipeline.contract.decoder import EventDecoder
from pipeline.model import Deliver, PipelineError, Rejection, Skip, WigzoRequest
from pipeline.wigzo.chain import Chain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_options(parser)
    parser.add_argument("file", nargs="?", default="-", metavar="FILE",
                        help="Segment events, one JSON object per line; '-' or omitted reads standard input")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--destination", metavar="NAME",
                        help="with several destinations ([destinations.NAME]), whose settings to use")
    chosen.add_argument("--topic", metavar="TOPIC",
                        help="as if the events were read from TOPIC: the settings of the destination owning it")


def main(args: argparse.Namespace) -> int:
    settings = config.load_settings(args)
    topic, settings = chosen_destination(settings, args.destination, args.topic)
    # The input is JSON lines whatever INPUT_FORMAT says about the Kafka topics.
    decoder = EventDecoder(replace(settings, input_formats={"*": "json"}))
    chain = Chain.from_settings(settings)
    with _lines(args.file) as lines:
        for line in lines:
            event_bytes = line.strip()
            if not event_bytes:
                continue
            decoded = decoder.decode_resolving(topic, event_bytes)
            decision, notes = (decoded, {}) if isinstance(decoded, Rejection) else chain.explain(decoded)
            shown = describe(decision, settings.wigzo_base_url)
            if notes:  # consent and destination filters, when set: which decided, and why
                shown["privacy"] = notes
            print(orjson.dumps(shown).decode(), flush=True)
    return 0


def chosen_destination(settings: Settings, name: str | None, topic: str | None) -> tuple[str, Settings]:
    """The topic the events are decoded as, and the settings of their destination: named, owning `topic`, or
    the only one."""
    destinations = dict(settings.for_destinations())
    if topic is not None:
        return topic, destinations[settings.destination_of(topic)]
    if name is None and len(destinations) > 1:
        raise ConfigError(f"there are {len(destinations)} destinations ({', '.join(destinations)}): choose one "
                          "with --destination NAME, or --topic TOPIC for the one owning that topic")
    if name is not None and name not in destinations:
        raise ConfigError(f"--destination {name!r}: no such destination; the destinations are "
                          f"{', '.join(destinations)}")
    own = destinations[name] if name is not None else settings
    return next(iter(own.topics), ""), own


def describe(decision: Deliver | Skip | Rejection, base_url: str) -> dict[str, Any]:
    """One output line; the outcome names match the consumer's outcome counts."""
    if isinstance(decision, Deliver):
        return {"outcome": "deliver", "requests": [_show(request, base_url) for request in decision.requests]}
    if isinstance(decision, Skip):
        return {"outcome": "skip", "reason": decision.reason}
    return {"outcome": "dead_letter", "stage": decision.stage, "reason": decision.message}


def _show(request: WigzoRequest, base_url: str) -> dict[str, Any]:
    query = urlencode(request.redacted_query(), safe="*")
    return {"method": request.method, "url": f"{base_url.rstrip('/')}{request.path}?{query}", "json": request.body}


@contextmanager
def _lines(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after the caller is done
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        yield stream
