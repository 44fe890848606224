"""Configuration: one table of settings, each readable from an environment variable or a flag.

The environment-variable names are public interface (deployments depend on them): keep them stable.
A flag always wins over the environment; the environment wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.model import PipelineError, Secret

LOCAL_BOOTSTRAP = "127.0.0.1:19092"
KAFKA_PASSTHROUGH_PREFIX = "KAFKA_OPT_"
ORDERING_MODES = ("key", "partition", "unordered")
DEFAULT_RETRY_STATUSES = frozenset({408, 500, 502, 503, 504})
INPUT_FORMATS = ("auto", "avro-confluent", "avro", "json")
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(PipelineError):
    """A setting is missing or malformed; the message names the variable/flag and the fix."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port from 1 to 65535, or 0 to turn it off")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be a positive number")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _retry_statuses(text: str) -> frozenset[int]:
    """HTTP statuses worth retrying; 401/403 and 429 keep their own handling and cannot be listed."""
    statuses = frozenset(int(part) for part in _csv(text))
    special = statuses & {401, 403, 429}
    if special or not all(400 <= status <= 599 for status in statuses):
        raise ValueError("must be 4xx/5xx statuses other than 401, 403 and 429 (those have their own handling), "
                         "e.g. 408,500,502,503,504")
    return statuses


def _topic_formats(text: str) -> dict[str, str]:
    """``auto`` or ``json`` applies to every topic; ``orders=avro,clicks=json`` picks per topic."""
    formats: dict[str, str] = {}
    for item in _csv(text):
        topic, sep, fmt = item.rpartition("=")
        _choice(INPUT_FORMATS)(fmt)
        formats[topic if sep else "*"] = fmt
    return formats


def _event_name_map(text: str) -> dict[str, str | None]:
    """Inline JSON object or a path to a JSON file: Segment event name -> Wigzo name, or null to skip."""
    raw = Path(text).read_bytes() if not text.lstrip().startswith("{") else text.encode()
    parsed = orjson.loads(raw)
    if not isinstance(parsed, dict) or not all(v is None or isinstance(v, str) for v in parsed.values()):
        raise ValueError('must be a JSON object of strings or null, e.g. {"Signed Up": "signup", "Heartbeat": null}')
    return parsed


@dataclass(frozen=True, slots=True)
class Option:
    attr: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "--bootstrap-servers", str,
           "Kafka bootstrap servers (host:port,...); default is the project's local broker"),
    Option("topics", "KAFKA_TOPICS", "--topics", _csv,
           "comma-separated source topics; an entry starting with ^ is a regex"),
    Option("group_id", "KAFKA_GROUP_ID", "--group-id", str, "consumer group id"),
    Option("auto_offset_reset", "KAFKA_AUTO_OFFSET_RESET", "--auto-offset-reset",
           _choice(("earliest", "latest")), "where a group with no committed offset starts"),
    Option("dlq_topic", "DLQ_TOPIC", "--dlq-topic", str,
           "dead-letter topic; default '<source topic>.dlq'"),
    Option("wigzo_base_url", "WIGZO_BASE_URL", "--wigzo-base-url", str,
           "Wigzo API base URL"),
    Option("wigzo_org_token", "WIGZO_ORG_TOKEN", "--wigzo-org-token", Secret,
           "Wigzo organization token (required)", secret=True),
    Option("wigzo_api_token", "WIGZO_API_TOKEN", "--wigzo-api-token", Secret,
           "Wigzo API token, sent as 'token' when set", secret=True),
    Option("max_in_flight", "WIGZO_MAX_IN_FLIGHT", "--max-in-flight", _positive_int,
           "Wigzo requests in flight at once"),
    Option("ordering", "DELIVERY_ORDERING", "--ordering", _choice(ORDERING_MODES),
           "delivery order: per message key (default), per partition, or unordered"),
    Option("input_formats", "INPUT_FORMAT", "--input-format", _topic_formats,
           "input format: auto|avro-confluent|avro|json, or per topic as 'topic=format,...'"),
    Option("avro_writer_schema", "AVRO_WRITER_SCHEMA", "--avro-writer-schema", str,
           "writer schema (.avsc path) for schemaless Avro input"),
    Option("schema_registry_url", "SCHEMA_REGISTRY_URL", "--schema-registry-url", str,
           "Confluent Schema Registry URL; without it schema ids resolve from schemas/registry.json"),
    Option("max_event_bytes", "MAX_EVENT_BYTES", "--max-event-bytes", _positive_int,
           "largest accepted event (Segment caps events at 32 KB)"),
    Option("event_name_map", "WIGZO_EVENT_MAP", "--event-map", _event_name_map,
           "JSON object (inline or file path) mapping Segment event names to Wigzo names, null to skip"),
    Option("connect_timeout", "WIGZO_CONNECT_TIMEOUT", "--connect-timeout", _positive_float,
           "seconds to establish a connection to Wigzo"),
    Option("read_timeout", "WIGZO_READ_TIMEOUT", "--read-timeout", _positive_float,
           "seconds to wait for Wigzo's response"),
    Option("ca_bundle", "WIGZO_CA_BUNDLE", "--ca-bundle", str, "CA bundle for Wigzo's TLS certificate"),
    Option("retry_statuses", "WIGZO_RETRY_STATUSES", "--retry-statuses", _retry_statuses,
           "HTTP statuses retried with backoff (any other 5xx is retried too; other 4xx are dead-lettered)"),
    Option("max_attempts", "WIGZO_MAX_ATTEMPTS", "--max-attempts", _positive_int,
           "attempts per event before it is dead-lettered (only while Wigzo serves other events)"),
    Option("retry_budget_seconds", "WIGZO_RETRY_BUDGET_SECONDS", "--retry-budget", _positive_float,
           "seconds an event may keep retrying before it is dead-lettered (same condition)"),
    Option("max_pending_per_partition", "MAX_PENDING_PER_PARTITION", "--max-pending-per-partition",
           _positive_int, "messages read but not finished per partition before it is paused"),
    Option("systemic_failure_threshold", "WIGZO_SYSTEMIC_FAILURE_THRESHOLD", "--systemic-failure-threshold",
           _positive_int, "distinct events failing the same way in a row, with no success between, that make it "
           "a configuration problem: delivery pauses instead of dead-lettering more"),
    Option("startup_timeout", "STARTUP_TIMEOUT", "--startup-timeout", _positive_float,
           "seconds to reach the broker, find the topics and join the group before a batch run gives up"),
    Option("metrics_port", "METRICS_PORT", "--metrics-port", _port,
           "port serving /metrics, /healthz and /readyz; 0 turns it off"),
    Option("log_format", "LOG_FORMAT", "--log-format", _choice(LOG_FORMATS),
           "json, text, or auto (json unless stderr is a terminal)"),
    Option("log_level", "LOG_LEVEL", "--log-level", _choice(LOG_LEVELS), "DEBUG, INFO, WARNING or ERROR"),
)


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str = LOCAL_BOOTSTRAP
    topics: tuple[str, ...] = ("segment-events",)
    group_id: str = "segment-wigzo"
    auto_offset_reset: str = "earliest"
    dlq_topic: str = ""
    wigzo_base_url: str = "https://app.wigzo.com"
    wigzo_org_token: Secret = Secret("")
    wigzo_api_token: Secret = Secret("")
    max_in_flight: int = 64
    ordering: str = "key"
    input_formats: Mapping[str, str] = field(default_factory=lambda: {"*": "auto"})
    avro_writer_schema: str = ""
    schema_registry_url: str = ""
    max_event_bytes: int = 32 * 1024
    event_name_map: Mapping[str, str | None] = field(default_factory=dict)
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    ca_bundle: str = ""
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    max_attempts: int = 10
    retry_budget_seconds: float = 300.0
    max_pending_per_partition: int = 250
    systemic_failure_threshold: int = 10
    startup_timeout: float = 60.0
    metrics_port: int = 9400
    log_format: str = "auto"
    log_level: str = "INFO"
    kafka_config: Mapping[str, str] = field(default_factory=dict)

    def dlq_topic_for(self, source_topic: str) -> str:
        return self.dlq_topic or f"{source_topic}.dlq"

    def require_org_token(self) -> None:
        if not self.wigzo_org_token:
            raise ConfigError(
                "WIGZO_ORG_TOKEN is not set: export it (or pass --wigzo-org-token) with the Organization "
                "Token from Wigzo under Settings > Integration"
            )

    def kafka_client_config(self) -> dict[str, str]:
        """Settings shared by every librdkafka client; user pass-through settings win."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_config}


def add_options(parser: argparse.ArgumentParser, attrs: set[str] | None = None) -> None:
    """Add the flags for the named settings (all when None); their defaults stay unresolved."""
    for option in OPTIONS:
        if attrs is None or option.attr in attrs:
            parser.add_argument(option.flag, dest=option.attr, default=None, metavar=option.env,
                                help=f"{option.help} [env {option.env}]")
    if attrs is None or "kafka_config" in attrs:
        parser.add_argument("--kafka-config", dest="kafka_config", action="append", default=None,
                            metavar="KEY=VALUE",
                            help="librdkafka setting passed through (repeatable), e.g. security.protocol=SASL_SSL; "
                                 f"also env {KAFKA_PASSTHROUGH_PREFIX}<KEY> with '.' written as '_'")


def _passthrough_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    config = {}
    for name, value in environ.items():
        if name.startswith(KAFKA_PASSTHROUGH_PREFIX):
            config[name[len(KAFKA_PASSTHROUGH_PREFIX):].lower().replace("_", ".")] = value
    return config


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from flag, then environment, then default; raise ConfigError naming the source."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        flag_value = getattr(args, option.attr, None) if args is not None else None
        source, raw = ((option.flag, flag_value) if flag_value is not None
                       else (option.env, environ.get(option.env)))
        if raw is None or raw == "":
            continue  # Settings' own default
        try:
            values[option.attr] = option.parse(raw)
        except (ValueError, OSError) as exc:
            shown = "***" if option.secret else repr(raw)[:80]
            raise ConfigError(f"{source}={shown} is invalid: {exc}") from None
    kafka_config = _passthrough_from_env(environ)
    for item in (getattr(args, "kafka_config", None) or []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kafka-config {item.split('=')[0]!r} is invalid: write it as KEY=VALUE")
        kafka_config[key.strip()] = value
    values["kafka_config"] = kafka_config
    return Settings(**values)
