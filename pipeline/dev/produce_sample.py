"""`wigzo-pipeline produce-sample`: the seeded sample stream onto a topic of any Kafka cluster.

A deployment (docker compose, a staging cluster) can then be watched working on realistic traffic, invalid
events and garbage bytes included, without a Segment source. The demo produces through `produce_samples` too.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from pipeline.config import ConfigError, add_options, load_settings
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.kafka.admin import (
    EnsuredTopic,
    KafkaErrors,
    KafkaUnreachable,
    TopicCreateError,
    cluster_metadata,
    ensure_topic,
)
from pipeline.model import PipelineError
from pipeline.telemetry.logs import configure_for, with_kafka_logging

# how long the broker may take to answer metadata, create the topic or acknowledge the last message
TIMEOUT_SECONDS = 30.0


class SampleProduceError(PipelineError):
    """The samples could not be written: the broker did not answer, or refused the topic or the messages."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, {"bootstrap_servers", "topics", "kafka_config"})
    parser.add_argument("--events", type=int, default=2000, help="how many sample messages to produce")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample stream (same seed, same bytes)")
    parser.add_argument("--topic", default=None, help="topic to produce to; default the first of KAFKA_TOPICS")
    parser.add_argument("--create-partitions", type=int, default=6, metavar="P",
                        help="partitions to create the topic with if it does not exist")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    configure_for(settings)
    topic = args.topic or next(iter(settings.topics), "")
    if not topic or topic.startswith("^"):
        raise ConfigError(f"KAFKA_TOPICS={','.join(settings.topics)!r} names no topic to produce to; "
                          "pass --topic NAME")
    config = settings.kafka_client_config()
    ensured = prepare_topic(config, topic, args.create_partitions)
    kinds = produce_samples(config, topic, SampleStream(seed=args.seed).messages(args.events))
    print(f"Produced {sum(kinds.values())} sample messages (seed {args.seed}) to {topic} ({ensured.partitions} "
          f"partitions, {'created' if ensured.created else 'existing'}) at {settings.bootstrap_servers}:")
    for kind, count in sorted(kinds.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count:>8}  {kind}")
    return 0


def prepare_topic(config: Mapping[str, str], topic: str, partitions: int) -> EnsuredTopic:
    """The topic as it exists, else created with `partitions`.

    Also the reachability check: an unreachable broker fails here, within TIMEOUT_SECONDS, with librdkafka's
    reason (refused, DNS, TLS, SASL) in the message instead of a stream of its retry lines on stderr."""
    errors = KafkaErrors()
    admin = AdminClient(with_kafka_logging({"log_level": 0, **config, "error_cb": errors}))
    try:
        return ensure_topic(admin, cluster_metadata(admin, errors, TIMEOUT_SECONDS), topic, partitions,
                            TIMEOUT_SECONDS)
    except KafkaUnreachable as exc:
        raise SampleProduceError(
            f"Kafka at {config['bootstrap.servers']} did not answer within {TIMEOUT_SECONDS:.0f}s "
            f"({exc.reason.str()}); {exc.fix}") from None
    except TopicCreateError as exc:
        why = exc.reason.str() if exc.reason else f"no answer within {TIMEOUT_SECONDS:.0f}s"
        raise SampleProduceError(f"could not create topic {topic!r} with {partitions} partitions: {why}; "
                                 "create it yourself or fix --create-partitions") from None


def produce_samples(config: Mapping[str, str], topic: str, samples: Iterable[SampleMessage]) -> Counter[str]:
    """Write the samples with an idempotent producer (no duplicates from internal retries) and wait until
    every one is acknowledged; returns the count per sample kind, or raises SampleProduceError."""
    producer = Producer(with_kafka_logging({**config, "enable.idempotence": True, "linger.ms": 10}))
    kinds: Counter[str] = Counter()
    failures: list[KafkaError] = []

    def acknowledged(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for sample in samples:
        while True:
            try:
                producer.produce(topic, key=sample.key, value=sample.value, on_delivery=acknowledged)
                break
            except BufferError:  # local queue full: let librdkafka drain some acknowledgements first
                producer.poll(0.1)
        producer.poll(0)
        kinds[sample.kind] += 1
    unacknowledged = producer.flush(TIMEOUT_SECONDS)
    if unacknowledged:
        raise SampleProduceError(
            f"{unacknowledged} of {sum(kinds.values())} sample messages were not acknowledged by Kafka at "
            f"{config['bootstrap.servers']} within {TIMEOUT_SECONDS:.0f}s; check KAFKA_BOOTSTRAP_SERVERS and "
            "that the broker is up")
    if failures:
        raise SampleProduceError(f"Kafka refused {len(failures)} of {sum(kinds.values())} sample messages "
                                 f"for {topic!r}: {failures[0].str()}")
    return kinds
