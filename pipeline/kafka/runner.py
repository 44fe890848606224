"""The one way a pipeline is built from settings and run: `run`, `replay`, `redrive` and the demo all come here.

Building wires the real parts (decoder, mapping, Wigzo client, dead-letter writer, executor); running
opens the consumer, lets SIGTERM/SIGINT drain and commit, and closes the consumer whatever happens.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Message

from pipeline.config import Settings
from pipeline.contract.decoder import EventDecoder, RegistryPatience
from pipeline.kafka.assignment import Assignment
from pipeline.kafka.dead_letters import DeadLetterWriter
from pipeline.kafka.executor import OrderedExecutor
from pipeline.kafka.parts import Flow, Parts
from pipeline.kafka.pipeline import Pipeline
from pipeline.kafka.watch import KafkaWatch
from pipeline.model import Skip
from pipeline.telemetry.logs import with_kafka_logging
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.client import WigzoClient
from pipeline.wigzo.policy import DeliveryPolicy

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings, assignment: Assignment, *,
                   reader: Callable[[Message], Message | Skip] | None = None, commit: bool = True) -> Pipeline:
    settings.require_org_token()
    dead_letters = DeadLetterWriter(settings)
    dead_letters.prepare(settings.topics)  # a misconfigured dead-letter topic stops us here, before anything is read
    shutdown = threading.Event()
    policy = DeliveryPolicy.from_settings(settings)
    parts = Parts(
        decoder=EventDecoder(settings, RegistryPatience(stop=shutdown)),
        decide=Chain.from_settings(settings).decide,
        client=WigzoClient(settings, policy=policy),
        dead_letters=dead_letters,
        executor=OrderedExecutor(settings.max_in_flight, policy.stall_after),
        shutdown=shutdown,
    )
    return Pipeline(parts, assignment, Flow.from_settings(settings), reader=reader, commit=commit,
                    watch=KafkaWatch(settings.bootstrap_servers))


def consumer_config(settings: Settings, watch: KafkaWatch, group_id: str | None = None) -> dict[str, Any]:
    return with_kafka_logging({
        "group.id": group_id or settings.group_id,
        "error_cb": watch.on_error,
        "auto.offset.reset": settings.auto_offset_reset,
        "client.id": "segment-wigzo",
        **settings.kafka_client_config(),
        # correctness depends on these, so the pass-through cannot override them
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    })


def run_pipeline(pipeline: Pipeline, settings: Settings, *, group_id: str | None = None,
                 stop_when: Callable[[], bool] | None = None) -> Pipeline:
    """Run until shutdown (a signal), `stop_when`, or an error; the consumer is closed in every case."""
    consumer = Consumer(consumer_config(settings, pipeline.watch, group_id))
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
