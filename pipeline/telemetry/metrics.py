"""The Prometheus metrics every part of the pipeline reports to, served on METRICS_PORT at /metrics.

Labels stay bounded: topics, partitions, stages, outcome names, status classes, retry reasons and skip reasons
(written by the code from the configuration: a consent category, a filter's title, an event-name map entry), and
destinations (the config file's `[destinations.NAME]` tables, or `default`); never user ids, message ids or
free-form reasons. Metrics are module-level (prometheus-client's usual pattern),
so a process serves the sum over every pipeline it runs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "wigzo_pipeline"

MESSAGES_CONSUMED = Counter(f"{PREFIX}_messages_consumed", "Messages read from Kafka", ["topic"])
OUTCOMES = Counter(f"{PREFIX}_outcomes", "Final outcome of each message read (stage: of a dead letter)",
                   ["outcome", "stage", "destination"])
SKIPS = Counter(f"{PREFIX}_skips", "Messages skipped on purpose, by reason (consent, a destination filter, "
                "integrations, call type, event-name map)", ["reason", "destination"])
DLQ_WRITES = Counter(f"{PREFIX}_dlq_writes", "Dead letters acknowledged by the dead-letter topic",
                     ["stage", "destination"])
DLQ_TRUNCATED = Counter(f"{PREFIX}_dlq_truncated", "Dead letters too large for their topic, stored cut down",
                        ["stage", "destination"])
CONSUMER_LAG = Gauge(f"{PREFIX}_consumer_lag", "Messages behind the partition's high watermark",
                     ["topic", "partition"], multiprocess_mode="livemax")

HTTP_REQUESTS = Counter(f"{PREFIX}_http_requests", "Requests sent to Wigzo, by answer",
                        ["status_class", "destination"])
HTTP_DURATION = Histogram(f"{PREFIX}_http_request_duration_seconds", "Time from sending a request to Wigzo's answer",
                          ["destination"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter(f"{PREFIX}_retries", "Deliveries attempted again, by why", ["reason", "destination"])
IN_FLIGHT = Gauge(f"{PREFIX}_in_flight", "Requests to Wigzo on the wire", ["destination"],
                  multiprocess_mode="livesum")
CONCURRENCY_LIMIT = Gauge(f"{PREFIX}_concurrency_limit", "Requests allowed in flight (lowered while throttled)",
                          ["destination"], multiprocess_mode="livesum")
CIRCUIT_OPEN = Gauge(f"{PREFIX}_circuit_open", "1 while Wigzo is failing and delivery is paused", ["destination"],
                     multiprocess_mode="livemax")
AUTH_FAILED = Gauge(f"{PREFIX}_auth_failed", "1 while Wigzo rejects the token", ["destination"],
                    multiprocess_mode="livemax")
MISCONFIGURED = Gauge(f"{PREFIX}_misconfigured",
                      "1 while every event fails the same permanent way and delivery is paused", ["destination"],
                      multiprocess_mode="livemax")
MAPPING_HELD = Gauge(f"{PREFIX}_mapping_held",
                     "Events held uncommitted, not dead-lettered, because the mapping rejected many in a row alike",
                     multiprocess_mode="livesum")
KEY_QUEUE_MAX = Gauge(f"{PREFIX}_key_queue_max",
                      "The most events one key (user) has waiting for delivery, in order, in any partition",
                      multiprocess_mode="livemax")
PENDING_BYTES = Gauge(f"{PREFIX}_pending_bytes",
                      "Estimated memory of messages read and not committed yet (bounded by MEMORY_BUDGET_MB / 4)",
                      multiprocess_mode="livesum")
AWAITING_SCHEMA = Gauge(f"{PREFIX}_awaiting_schema",
                        "Messages waiting for the schema registry to resolve their schema id",
                        multiprocess_mode="livesum")
KAFKA_SILENT = Gauge(f"{PREFIX}_kafka_silent", "1 while a broker leaves our requests unanswered (KAFKA_STALL_SECONDS)",
                     multiprocess_mode="livemax")
EVENT_TO_DELIVERY = Histogram(f"{PREFIX}_event_to_delivery_seconds",
                              "From the event's timestamp to Wigzo's 2xx",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
CONFIG_RELOADS = Counter(f"{PREFIX}_config_reloads", "Settings read again while running (SIGHUP, a file changed), by "
                         "result: applied, unchanged, or rejected (invalid: the running settings stay)", ["result"])
CONFIG_GENERATION = Gauge(f"{PREFIX}_config_generation",
                          "How many reloads changed the settings since the member started (0: as started)",
                          multiprocess_mode="livemax")


def status_class(status: int | None) -> str:
    """'2xx'..'5xx', or 'error' when no answer came (timeout, refused connection)."""
    return "error" if status is None else f"{status // 100}xx"
