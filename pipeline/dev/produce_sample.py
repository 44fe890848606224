"""`wigzo-pipeline produce-sample`: the seeded sample stream onto a topic of any Kafka cluster.

A deployment (docker compose, a staging cluster) can then be watched working on realistic traffic, invalid
events and garbage bytes included, without a Segment source. The demo produces through `produce_samples` too.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import ConfigError, add_options, load_settings
from pipeline.dev.samples import SampleMessage, SampleStream
from pipeline.model import PipelineError

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
    topic = args.topic or next(iter(settings.topics), "")
    if not topic or topic.startswith("^"):
        raise ConfigError(f"KAFKA_TOPICS={','.join(settings.topics)!r} names no topic to produce to; "
                          "pass --topic NAME")
    config = settings.kafka_client_config()
    partitions, created = ensure_topic(config, topic, args.create_partitions)
    kinds = produce_samples(config, topic, SampleStream(seed=args.seed).messages(args.events))
    print(f"Produced {sum(kinds.values())} sample messages (seed {args.seed}) to {topic} "
          f"({partitions} partitions, {'created' if created else 'existing'}) at {settings.bootstrap_servers}:")
    for kind, count in sorted(kinds.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count:>8}  {kind}")
    return 0


def ensure_topic(config: Mapping[str, str], topic: str, partitions: int) -> tuple[int, bool]:
    """(partition count, whether it was created now): the topic as it exists, else created with `partitions`.

    Also the reachability check: an unreachable broker fails here, within TIMEOUT_SECONDS, with librdkafka's
    reason (refused, DNS, TLS, SASL) in the message instead of a stream of its retry lines on stderr."""
    errors: list[KafkaError] = []
    admin = AdminClient({"log_level": 0, **config, "error_cb": errors.append})
    try:
        existing = admin.list_topics(timeout=TIMEOUT_SECONDS).topics
    except KafkaException as exc:
        admin.poll(0)  # serves the queued error callbacks
        reason = next((e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN), exc.args[0])
        raise SampleProduceError(
            f"Kafka at {config['bootstrap.servers']} did not answer within {TIMEOUT_SECONDS:.0f}s "
            f"({reason.str()}); check KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers), the KAFKA_OPT_* "
            "security settings, and that the broker is up") from None
    if topic in existing and existing[topic].error is None:
        return len(existing[topic].partitions), False
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions)],
                                 operation_timeout=TIMEOUT_SECONDS)[topic]
    try:
        future.result(timeout=TIMEOUT_SECONDS)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another producer created it meanwhile
            raise SampleProduceError(f"could not create topic {topic!r} with {partitions} partitions: "
                                     f"{exc.args[0].str()}; create it yourself or fix --create-partitions") from None
        return len(admin.list_topics(topic, timeout=TIMEOUT_SECONDS).topics[topic].partitions), False
    return partitions, True


def produce_samples(config: Mapping[str, str], topic: str, samples: Iterable[SampleMessage]) -> Counter[str]:
    """Write the samples with an idempotent producer (no duplicates from internal retries) and wait until
    every one is acknowledged; returns the count per sample kind, or raises SampleProduceError."""
    producer = Producer({**config, "enable.idempotence": True, "linger.ms": 10})
    kinds: Counter[str] = Counter()
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for sample in samples:
        while True:
            try:
                producer.produce(topic, key=sample.key, value=sample.value, on_delivery=delivered)
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
