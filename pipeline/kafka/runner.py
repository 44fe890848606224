"""The one way a pipeline is built from settings and run: `run`, `replay`, `redrive` and the demo all come here.

Building wires the real parts (decoder, the destinations with their chains and Wigzo clients, dead-letter writer,
executor), and for `run` the live settings that a reload changes (`PartsReload`); running opens the consumer,
lets SIGTERM/SIGINT drain and commit, and closes the consumer whatever happens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Message

from pipeline.config import Settings, SettingsSource
from pipeline.contract.decoder import EventDecoder
from pipeline.contract.registry import SchemaLookups
from pipeline.kafka.admin import BrokerOffsets, LatestHighs
from pipeline.kafka.assignment import Assignment
from pipeline.kafka.dead_letters import DeadLetterWriter
from pipeline.kafka.executor import OrderedExecutor
from pipeline.kafka.parts import Destinations, Flow, Parts
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.watch import KafkaWatch
from pipeline.live import Changes, LiveSettings
from pipeline.model import Scrubber, Secret, Skip
from pipeline.telemetry.logs import with_kafka_logging
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.destination import Destination
from pipeline.wigzo.policy import DeliveryPolicy

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
STATISTICS_INTERVAL_MS = 1000  # how often librdkafka's statistics tell the watch when each broker last answered


def build_pipeline(settings: Settings, assignment: Assignment, *,
                   reader: Callable[[Message], Message | Skip] | None = None, commit: bool = True,
                   live: SettingsSource | None = None) -> Pipeline:
    """`live`: where the settings came from, for a member whose settings change while it runs (`run`)."""
    settings.require_org_token()
    _return_large_allocations()
    destinations = Destinations([(Destination(name, own), own.topics) for name, own in settings.for_destinations()])
    dead_letters = DeadLetterWriter(settings)
    dead_letters.prepare(settings.topics)  # a misconfigured dead-letter topic stops us here, before anything is read
    shutdown = threading.Event()
    decoder = EventDecoder(settings)
    executor = OrderedExecutor(_workers(settings), DeliveryPolicy.from_settings(settings).stall_after)
    parts = Parts(
        decoder=decoder,
        schemas=SchemaLookups(decoder.resolve, decoder.registry_address, stop=shutdown),
        destinations=destinations,
        dead_letters=dead_letters,
        executor=executor,
        shutdown=shutdown,
    )
    highs = LatestHighs(BrokerOffsets(settings.kafka_client_config(), settings.group_id))
    reload = (LiveSettings(live, settings, PartsReload(destinations, executor, dead_letters))
              if live is not None else None)
    return Pipeline(parts, assignment, Flow.from_settings(settings), reader=reader, commit=commit,
                    watch=KafkaWatch(settings.bootstrap_servers, stall_after=settings.kafka_stall_seconds),
                    highs=highs, live=reload)


def _workers(settings: Settings) -> int:
    """Worker threads: every destination's requests in flight (each client keeps to its own limit)."""
    return sum(own.max_in_flight for _, own in settings.for_destinations())


class PartsReload:
    """What a settings reload changes in the running parts: each destination's chain and client, the worker
    threads, and the secrets the dead-letter headers are scrubbed of."""

    def __init__(self, destinations: Destinations[Destination], executor: OrderedExecutor,
                 dead_letters: DeadLetterWriter[Any]) -> None:
        self._destinations = destinations
        self._executor = executor
        self._dead_letters = dead_letters

    def prepare(self, settings: Settings) -> dict[str, Chain]:
        return {name: Destination.prepare(own) for name, own in settings.for_destinations()}

    def apply(self, settings: Settings, prepared: dict[str, Chain], changes: Changes,
              secrets: Collection[Secret]) -> None:
        for name, own in settings.for_destinations():
            if name in changes:
                destination = self._destinations.for_name(name)
                destination.reconfigure(own, prepared[name], changes[name])
        self._executor.resize(_workers(settings))
        self._dead_letters.scrub = Scrubber(secrets)


def _return_large_allocations() -> None:
    """Keep glibc's malloc giving large blocks (a message value, a request body) pages of their own, returned to
    the system when freed. By default it raises that threshold to the largest block freed so far (up to 32 MiB),
    after which large messages are carved out of heaps that never shrink: a backlog of 750 KB messages once held
    about 80 MB more than the same backlog with the threshold fixed. Elsewhere (not glibc) nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def consumer_config(settings: Settings, pipeline: Pipeline, group_id: str | None = None) -> dict[str, Any]:
    """The pipeline's callbacks (errors, statistics for hung brokers, commit answers), the prefetch sized from
    the memory budget, then the user's settings, then what correctness needs."""
    return with_kafka_logging({
        "group.id": group_id or settings.group_id,
        "error_cb": pipeline.watch.on_error,
        "stats_cb": pipeline.watch.on_stats,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        "on_commit": pipeline.commit_answered,
        "auto.offset.reset": settings.auto_offset_reset,
        "client.id": "segment-wigzo",
        **settings.consumer_prefetch(),
        **settings.kafka_client_config(),
        # correctness depends on these, so the pass-through cannot override them
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    })


def run_pipeline(pipeline: Pipeline, settings: Settings, *, group_id: str | None = None,
                 stop_when: Callable[[], bool] | None = None) -> Pipeline:
    """Run until shutdown (a signal), `stop_when`, or an error; the consumer is closed in every case."""
    consumer = Consumer(consumer_config(settings, pipeline, group_id))
    try:
        with _signals_drain(pipeline):
            pipeline.run(consumer, stop_when=stop_when)
    finally:
        consumer.close()
    return pipeline


@contextmanager
def _signals_drain(pipeline: Pipeline) -> Iterator[None]:
    """First SIGTERM/SIGINT: drain, commit, exit 0. Second: exit at once, committing nothing more.
    Only the main thread receives signals; elsewhere (a test running two members) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        if pipeline.shutting_down:
            log.warning("second signal: exiting now without committing unfinished work")
            os._exit(128 + signum)
        log.info("signal %d: draining in-flight deliveries and committing; signal again to exit at once", signum)
        pipeline.request_shutdown()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
