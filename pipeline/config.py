"""Configuration: every setting declared once, as a field of `Settings` with its default, names and parser, and
readable from a flag, an environment variable or a TOML file.

The environment-variable names and the config file's keys are public interface (deployments depend on them):
keep them stable. A flag wins over the environment, the environment over the config file, the file over the
default; every source's text goes through the same parser, so validation is the same wherever a value comes from.
Credentials become `Secret` as they are read, and may come from files (`WIGZO_ORG_TOKEN_FILE`, ...).

Each declaration also says when a change takes effect: a `live` setting while the member runs (pipeline.live
reloads it on SIGHUP or when a file it was read from changes), any other only on restart. A `destination`
setting is a Wigzo-side one (always live): a `[destinations.NAME]` table of the config file may override it
for the topics that destination owns.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import orjson

from pipeline.model import PipelineError, Secret
from pipeline.wigzo.consent import CONSENT_MISSING, ConsentMissing
from pipeline.wigzo.filters import DestinationFilter, parse_filters

LOCAL_BOOTSTRAP = "127.0.0.1:19092"
KAFKA_PASSTHROUGH_PREFIX = "KAFKA_OPT_"
CONFIG_ENV = "WIGZO_PIPELINE_CONFIG"
KAFKA_TABLE = "kafka"  # the config file's table of librdkafka settings
DESTINATIONS_TABLE = "destinations"  # the config file's tables of Wigzo destinations, one per name
DESTINATION_TOPICS = "topics"  # the key of a destination's table naming the topics it owns
DEFAULT_DESTINATION = "default"  # the one destination of a configuration without [destinations]
DESTINATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # it shows in metric labels and headers
SECRET_FILE_SUFFIX = "_file"  # `wigzo_org_token_file`, `sasl.password_file`; `_FILE` in environment names
# librdkafka settings holding credentials: the ones librdkafka itself treats as sensitive
KAFKA_SECRET_MARKERS = ("password", "secret", "passphrase", "key.pem", "oauthbearer.config")
ORDERING_MODES = ("key", "partition", "unordered")
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


def _inline_json(text: str) -> bool:
    return text.lstrip().startswith(("[", "{"))


def _path_unless_inline(text: str) -> str | None:
    """The file a value names, unless it is JSON written inline."""
    return None if _inline_json(text) else text


def _path(text: str) -> str | None:
    return text


def _event_name_map(text: str) -> dict[str, str | None]:
    """Inline JSON object or a path to a JSON file: Segment event name -> Wigzo name, or null to skip."""
    raw = Path(text).read_bytes() if not _inline_json(text) else text.encode()
    parsed = orjson.loads(raw)
    if not isinstance(parsed, dict) or not all(v is None or isinstance(v, str) for v in parsed.values()):
        raise ValueError('must be a JSON object of strings or null, e.g. {"Signed Up": "signup", "Heartbeat": null}')
    return parsed


def _filters(text: str) -> tuple[DestinationFilter, ...]:
    """A JSON file of Segment destination filters as the Public API returns them (or that JSON inline), each `if`
    parsed now: a filter that does not parse stops the pipeline at start, named with the column."""
    raw = text.encode() if _inline_json(text) else Path(text).read_bytes()
    return parse_filters(orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as a user sets it: derived from its `Settings` field, whose name is the config file's key."""

    attr: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    secret: bool
    shown_default: str  # the default as the README's settings table writes it
    structured: bool  # the config file may write it as TOML tables, handed to `parse` as their JSON
    live: bool  # a change takes effect while running (on SIGHUP or a file change); otherwise on restart
    destination: bool  # Wigzo-side: a destination's table may override it (always live)
    names_file: Callable[[str], str | None] | None  # the file a value names, watched for changes while running

    @property
    def when(self) -> str:
        """When a change takes effect, as docs/configuration.md's table of keys says it."""
        return "live, per destination" if self.destination else "live" if self.live else "restart"


_DECLARATION = "setting"  # the field metadata key under which `setting` keeps the rest of an Option


def _shown(default: object) -> str:
    """A default as its environment variable would hold it (`408,500,502,503,504`, `5`), or `unset`."""
    if isinstance(default, (str, Secret, Mapping)) and not default:
        return "unset"
    if isinstance(default, frozenset):
        default = tuple(sorted(default))
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def setting(default: Any, *, env: str, flag: str, parse: Callable[[str], Any], help: str, secret: bool = False,
            shown: str | None = None, structured: bool = False, live: bool = False, destination: bool = False,
            names_file: Callable[[str], str | None] | None = None) -> Any:
    """A `Settings` field with its default, environment variable, flag, parser and help in one place.

    `shown` is the default as the docs write it where the value is not what a user reads (`<source topic>.dlq`
    for an empty DLQ_TOPIC); otherwise it is derived from the default. A `structured` setting's parser reads
    JSON, which the config file may also write as TOML tables. A `live` setting changes while the member runs;
    a `destination` setting is Wigzo-side, live, and may differ per destination. `names_file` says which file
    a value names (a path), for the watcher that notices when it changes.
    """
    declared = {"env": env, "flag": flag, "parse": parse, "help": help, "secret": secret,
                "shown_default": _shown(default) if shown is None else shown, "structured": structured,
                "live": live or destination, "destination": destination, "names_file": names_file}
    if isinstance(default, dict):  # every Settings gets its own: a dataclass field cannot share a mutable default
        return field(default_factory=default.copy, metadata={_DECLARATION: declared})
    return field(default=default, metadata={_DECLARATION: declared})


FileStamp = tuple[str, int, int, int] | None  # (resolved path, mtime in ns, inode, size); None: cannot be read


def stamp(path: str) -> FileStamp:
    """How a file is now: the file its path resolves to, its mtime, inode and size. A rewrite changes it, and so
    does a swapped symlink (Kubernetes updates a mounted Secret by swapping its `..data` link), even when the
    new file has the same size and time. None when it cannot be read."""
    try:
        resolved = os.path.realpath(path)
        info = os.stat(resolved)
    except OSError:
        return None
    return resolved, info.st_mtime_ns, info.st_ino, info.st_size


@dataclass(frozen=True, slots=True)
class DestinationTable:
    """A `[destinations.NAME]` table of the config file: the topics that destination owns and the Wigzo-side
    settings it overrides (parsed), with the files its credentials were read from."""

    name: str
    topics: tuple[str, ...]
    overrides: Mapping[str, Any]  # by Settings attribute
    secret_files: Mapping[str, str]  # by Settings attribute: the path a credential was read from

    def applied_to(self, settings: Settings) -> Settings:
        """The destination's settings: the top-level ones it inherits, its own topics and overrides."""
        inherited = {attr: path for attr, path in settings.secret_files.items() if attr not in self.overrides}
        return replace(settings, topics=self.topics, destinations=(), secret_files={**inherited, **self.secret_files},
                       **self.overrides)


def owns(entry: str, topic: str) -> bool:
    """Whether a topics entry takes `topic`: by name, or a `^pattern` that matches it (as the subscription does)."""
    return entry == topic or (entry.startswith("^") and re.match(entry, topic) is not None)


def route(topic: str, destinations: Iterable[tuple[str, Sequence[str]]]) -> str:
    """The name of the destination (name, its topics entries) owning `topic`; ConfigError when none does, or two
    do (two patterns that overlap cannot be told apart before a topic matches both)."""
    owners = [name for name, topics in destinations if any(owns(entry, topic) for entry in topics)]
    if len(owners) > 1:
        raise ConfigError(f"topic {topic!r} is owned by two destinations, {owners[0]!r} and {owners[1]!r}: "
                          f"{_ONE_OWNER}")
    if not owners:
        raise ConfigError(f"topic {topic!r} belongs to no destination: add it (or a pattern matching it) to the "
                          f"topics of one [{DESTINATIONS_TABLE}.NAME] table")
    return owners[0]


_ONE_OWNER = ("a topic belongs to one destination; to deliver one topic to two Wigzo organizations, run a second "
              "consumer group with its own config file")


def dead_letter_topic(source: str, dlq_topic: str) -> str | None:
    """Where a source's dead letters go: DLQ_TOPIC (`dlq_topic`) when set, else '<source>.dlq'. A pattern source
    (`^...`) has none without DLQ_TOPIC: its '<topic>.dlq' names could match the pattern and be read back in.
    The one copy of the rule; it lives here, not with the Kafka administration that uses it, so that reading
    the settings never loads the Kafka client (the `--workers` supervisor does not)."""
    if dlq_topic:
        return dlq_topic
    return None if source.startswith("^") else f"{source}.dlq"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the pipeline, each declared once: its default, names and parser (see `setting`)."""

    bootstrap_servers: str = setting(
        LOCAL_BOOTSTRAP, env="KAFKA_BOOTSTRAP_SERVERS", flag="--bootstrap-servers", parse=str,
        help="Kafka bootstrap servers (host:port,...); default is the project's local broker")
    topics: tuple[str, ...] = setting(
        ("segment-events",), env="KAFKA_TOPICS", flag="--topics", parse=_csv,
        help="comma-separated source topics; an entry starting with ^ is a regex")
    group_id: str = setting("segment-wigzo", env="KAFKA_GROUP_ID", flag="--group-id", parse=str,
                            help="consumer group id")
    auto_offset_reset: str = setting(
        "earliest", env="KAFKA_AUTO_OFFSET_RESET", flag="--auto-offset-reset", parse=_choice(("earliest", "latest")),
        help="where a group with no committed offset starts")
    dlq_topic: str = setting(
        "", env="DLQ_TOPIC", flag="--dlq-topic", parse=str, shown="<source topic>.dlq",
        help="dead-letter topic; default '<source topic>.dlq'")
    wigzo_base_url: str = setting("https://app.wigzo.com", env="WIGZO_BASE_URL", flag="--wigzo-base-url", parse=str,
                                  help="Wigzo API base URL", destination=True)
    wigzo_org_token: Secret = setting(
        Secret(""), env="WIGZO_ORG_TOKEN", flag="--wigzo-org-token", parse=Secret, secret=True, shown="required",
        help="Wigzo organization token (required)", destination=True)
    wigzo_api_token: Secret = setting(
        Secret(""), env="WIGZO_API_TOKEN", flag="--wigzo-api-token", parse=Secret, secret=True,
        help="Wigzo API token, sent as 'token' when set", destination=True)
    max_in_flight: int = setting(256, env="WIGZO_MAX_IN_FLIGHT", flag="--max-in-flight", parse=_positive_int,
                                 help="Wigzo requests in flight at once", destination=True)
    ordering: str = setting(
        "key", env="DELIVERY_ORDERING", flag="--ordering", parse=_choice(ORDERING_MODES),
        help="delivery order: per message key (default), per partition, or unordered")
    input_formats: Mapping[str, str] = setting(
        {"*": "auto"}, env="INPUT_FORMAT", flag="--input-format", parse=_topic_formats, shown="auto",
        help="input format: auto|avro-confluent|avro|json, or per topic as 'topic=format,...'")
    avro_writer_schema: str = setting(
        "", env="AVRO_WRITER_SCHEMA", flag="--avro-writer-schema", parse=str,
        help="writer schema (.avsc path) for schemaless Avro input")
    schema_registry_url: str = setting(
        "", env="SCHEMA_REGISTRY_URL", flag="--schema-registry-url", parse=str,
        help="Confluent Schema Registry URL; without it schema ids resolve from schemas/registry.json")
    max_event_bytes: int = setting(
        32 * 1024, env="MAX_EVENT_BYTES", flag="--max-event-bytes", parse=_positive_int,
        help="largest accepted event (Segment caps events at 32 KB)")
    event_name_map: Mapping[str, str | None] = setting(
        {}, env="WIGZO_EVENT_MAP", flag="--event-map", parse=_event_name_map,
        help="JSON object (inline or file path) mapping Segment event names to Wigzo names, null to skip",
        destination=True, names_file=_path_unless_inline)
    consent_categories: tuple[str, ...] = setting(
        (), env="WIGZO_CONSENT_CATEGORIES", flag="--consent-categories", parse=_csv, shown="unset",
        help="Segment consent categories Wigzo belongs to, comma-separated (e.g. Advertising,Analytics): an event "
             "reaches Wigzo only when its context.consent.categoryPreferences grants every one; unset: not enforced",
        destination=True)
    consent_missing: ConsentMissing = setting(
        "deliver", env="WIGZO_CONSENT_MISSING", flag="--consent-missing", parse=_choice(CONSENT_MISSING),
        help="an event with no consent object when consent categories are set: deliver (as Segment does) or skip",
        destination=True)
    filters: tuple[DestinationFilter, ...] = setting(
        (), env="WIGZO_FILTERS", flag="--filters", parse=_filters, shown="unset", structured=True,
        help="JSON file of Segment destination filters for Wigzo, as Segment's Public API returns them",
        destination=True, names_file=_path_unless_inline)
    connect_timeout: float = setting(5.0, env="WIGZO_CONNECT_TIMEOUT", flag="--connect-timeout",
                                     parse=_positive_float, help="seconds to establish a connection to Wigzo",
                                     destination=True)
    read_timeout: float = setting(15.0, env="WIGZO_READ_TIMEOUT", flag="--read-timeout", parse=_positive_float,
                                  help="seconds to wait for Wigzo's response", destination=True)
    ca_bundle: str = setting("", env="WIGZO_CA_BUNDLE", flag="--ca-bundle", parse=str, shown="system",
                             help="CA bundle for Wigzo's TLS certificate", destination=True, names_file=_path)
    retry_statuses: frozenset[int] = setting(
        frozenset({408, 500, 502, 503, 504}), env="WIGZO_RETRY_STATUSES", flag="--retry-statuses",
        parse=_retry_statuses,
        help="HTTP statuses retried with backoff (any other 5xx is retried too; other 4xx are dead-lettered)",
        destination=True)
    max_attempts: int = setting(
        10, env="WIGZO_MAX_ATTEMPTS", flag="--max-attempts", parse=_positive_int,
        help="attempts per event before it is dead-lettered (only while Wigzo serves other events)",
        destination=True)
    retry_budget_seconds: float = setting(
        300.0, env="WIGZO_RETRY_BUDGET_SECONDS", flag="--retry-budget", parse=_positive_float,
        help="seconds an event may keep retrying before it is dead-lettered (same condition)", destination=True)
    max_pending_per_partition: int = setting(
        1000, env="MAX_PENDING_PER_PARTITION", flag="--max-pending-per-partition", parse=_positive_int,
        help="unfinished messages per partition before it is paused (one user's count up to a tenth of it)")
    memory_budget_mb: int = setting(
        256, env="MEMORY_BUDGET_MB", flag="--memory-budget-mb", parse=_positive_int,
        help="MiB of memory per member: an eighth for librdkafka's prefetch, a quarter for messages read and not "
             "committed yet, the rest for the process itself (see docs/operations.md, memory)")
    kafka_stall_seconds: float = setting(
        15.0, env="KAFKA_STALL_SECONDS", flag="--kafka-stall-seconds", parse=_positive_float,
        help="seconds a broker may leave our requests unanswered before the member reports it and is unready")
    systemic_failure_threshold: int = setting(
        10, env="WIGZO_SYSTEMIC_FAILURE_THRESHOLD", flag="--systemic-failure-threshold", parse=_positive_int,
        help="distinct events failing the same way in a row (Wigzo's answer, or the mapping's rejection), with no "
             "success between, that make it a configuration problem: the rest are held, not dead-lettered",
        destination=True)
    startup_timeout: float = setting(
        60.0, env="STARTUP_TIMEOUT", flag="--startup-timeout", parse=_positive_float,
        help="seconds to reach the broker, find the topics and join the group before a batch run gives up")
    workers: int = setting(
        1, env="WORKERS", flag="--workers", parse=_positive_int,
        help="consumer-group members in this container, one process each under a supervisor (run only)")
    metrics_port: int = setting(9400, env="METRICS_PORT", flag="--metrics-port", parse=_port,
                                help="port serving /metrics, /healthz and /readyz; 0 turns it off")
    log_format: str = setting("auto", env="LOG_FORMAT", flag="--log-format", parse=_choice(LOG_FORMATS),
                              help="json, text, or auto (json unless stderr is a terminal)")
    log_level: str = setting("INFO", env="LOG_LEVEL", flag="--log-level", parse=_choice(LOG_LEVELS),
                             help="DEBUG, INFO, WARNING or ERROR", live=True)
    # librdkafka settings passed through (KAFKA_OPT_<KEY>, --kafka-config, [kafka]), credentials as Secret
    kafka_config: Mapping[str, str | Secret] = field(default_factory=dict)
    # the config file's [destinations.NAME] tables; without any, one destination (`default`) has these settings
    destinations: tuple[DestinationTable, ...] = ()
    # the file each credential was read from (WIGZO_ORG_TOKEN_FILE, ...), by attribute: re-read on a 401/403
    secret_files: Mapping[str, str] = field(default_factory=dict)
    # every file these settings were read from, as it was just before: what the live reload watches
    read_from: tuple[tuple[str, FileStamp], ...] = ()

    def for_destinations(self) -> list[tuple[str, Settings]]:
        """Each destination's name and settings (its topics, the Wigzo-side settings it overrides, the rest
        inherited); one destination named `default` when the config file has no [destinations] table."""
        if not self.destinations:
            return [(DEFAULT_DESTINATION, self)]
        return [(table.name, table.applied_to(self)) for table in self.destinations]

    def destination_of(self, topic: str) -> str:
        """The name of the destination a message of `topic` goes to (see `route`)."""
        if not self.destinations:
            return DEFAULT_DESTINATION
        return route(topic, [(table.name, table.topics) for table in self.destinations])

    def dlq_topic_for(self, source_topic: str) -> str:
        """The dead-letter topic of `source_topic` (the rule is `dead_letter_topic`)."""
        topic = dead_letter_topic(source_topic, self.dlq_topic)
        if topic is None:
            raise ConfigError(f"KAFKA_TOPICS entry {source_topic!r} is a pattern, which has no '<topic>.dlq' "
                              "dead-letter topic: name one with DLQ_TOPIC (--dlq-topic)")
        return topic

    def dead_letter_topics(self) -> list[str]:
        """Every dead-letter topic the source topics write to, each once, in KAFKA_TOPICS order: what the
        commands that read dead letters (`dlq`, `redrive`) read."""
        return list(dict.fromkeys(self.dlq_topic_for(source) for source in self.topics))

    def require_org_token(self) -> None:
        """Every destination has its Organization Token."""
        for name, settings in self.for_destinations():
            if settings.wigzo_org_token:
                continue
            if self.destinations:
                raise ConfigError(f"destination {name!r} has no Wigzo org token: set wigzo_org_token_file in its "
                                  f"[{DESTINATIONS_TABLE}.{name}] table (or one at the top level for every "
                                  "destination) to a file holding the Organization Token from Wigzo under "
                                  "Settings > Integration")
            raise ConfigError(
                "WIGZO_ORG_TOKEN is not set: export it (or WIGZO_ORG_TOKEN_FILE naming a file that holds it; "
                "wigzo_org_token_file in the config file) with the Organization Token from Wigzo under "
                "Settings > Integration"
            )

    def consumer_prefetch(self) -> dict[str, int]:
        """librdkafka's prefetch, an eighth of the memory budget: half queued, half for one fetch in flight
        (fetch.max.bytes), which is also about the most one `consume` hands the loop at once. The user's own
        [kafka] settings win (consumer_config puts them after these)."""
        sixteenth = self.memory_budget_mb * 1024 * 1024 // 16
        fetch = min(sixteenth, 64 * 1024 * 1024)  # under librdkafka's receive.message.max.bytes (100 MB)
        return {"queued.max.messages.kbytes": sixteenth // 1024, "fetch.max.bytes": fetch,
                "max.partition.fetch.bytes": min(1024 * 1024, fetch)}

    def pending_window_bytes(self) -> int:
        """Memory for messages read and not committed yet: a quarter of the budget."""
        return self.memory_budget_mb * 1024 * 1024 // 4

    def kafka_client_config(self) -> dict[str, str]:
        """Settings shared by every librdkafka client, credentials revealed (for librdkafka only); user
        pass-through settings win."""
        passthrough = {key: value.reveal() if isinstance(value, Secret) else value
                       for key, value in self.kafka_config.items()}
        return {"bootstrap.servers": self.bootstrap_servers, **passthrough}

    def secrets(self) -> tuple[Secret, ...]:
        """Every credential in these settings (every destination's), for the scrubbers of logs, errors and
        dead-letter headers."""
        return (self.wigzo_org_token, self.wigzo_api_token,
                *(value for value in self.kafka_config.values() if isinstance(value, Secret)),
                *(value for table in self.destinations for value in table.overrides.values()
                  if isinstance(value, Secret)))


# every setting a user sets, in declaration order (kafka_config has sources of its own)
OPTIONS: tuple[Option, ...] = tuple(Option(f.name, **f.metadata[_DECLARATION]) for f in fields(Settings)
                                     if _DECLARATION in f.metadata)
BY_ATTR: Mapping[str, Option] = {option.attr: option for option in OPTIONS}


@dataclass(frozen=True, slots=True)
class SettingsSource:
    """Where a member's settings come from, to read them again while it runs: the command line's settings
    flags (and --config); the environment is the process's own, which nothing outside it changes."""

    flags: argparse.Namespace | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> SettingsSource:
        """Only the settings' flags: the namespace travels to `--workers` members."""
        names = [option.attr for option in OPTIONS] + ["config", "kafka_config"]
        return cls(argparse.Namespace(**{name: getattr(args, name, None) for name in names}))

    def load(self) -> Settings:
        return load_settings(self.flags)


def add_options(parser: argparse.ArgumentParser, attrs: set[str] | None = None) -> None:
    """Add the flags for the named settings (all when None) and --config; their defaults stay unresolved."""
    parser.add_argument("--config", dest="config", default=None, metavar="FILE",
                        help="TOML file of settings; flags and environment variables override it "
                             f"(see docs/configuration.md) [env {CONFIG_ENV}]")
    for option in OPTIONS:
        if attrs is None or option.attr in attrs:
            parser.add_argument(option.flag, dest=option.attr, default=None, metavar=option.env,
                                help=f"{option.help} [env {option.env}]")
    if attrs is None or "kafka_config" in attrs:
        parser.add_argument("--kafka-config", dest="kafka_config", action="append", default=None,
                            metavar="KEY=VALUE",
                            help="librdkafka setting passed through (repeatable), e.g. security.protocol=SASL_SSL; "
                                 f"also env {KAFKA_PASSTHROUGH_PREFIX}<KEY> with '.' written as '_'")


def _is_kafka_secret(key: str) -> bool:
    """A librdkafka setting holding a credential is kept as a Secret from the moment it is read."""
    return any(marker in key for marker in KAFKA_SECRET_MARKERS)


@dataclass(frozen=True, slots=True)
class _Raw:
    """One setting's text as one source holds it, with the name an error should give that source."""

    name: str  # e.g. "--max-in-flight", "WIGZO_MAX_IN_FLIGHT", "max_in_flight", "[kafka] sasl.password"
    text: str
    from_file: bool = False  # `text` is the path of a file holding the (secret) value
    origin: str = ""  # the config file's path, for a value from it

    @property
    def where(self) -> str:
        return f"{self.origin}: {self.name}" if self.origin else self.name

    def value(self, read: dict[str, FileStamp] | None = None) -> str:
        """The text, or the secret file's content without its trailing newline (as `echo token > file` leaves);
        the file's stamp goes into `read` first, so a change made while it is read is not missed."""
        if not self.from_file:
            return self.text
        if read is not None:
            read.setdefault(self.text, stamp(self.text))
        try:
            content = Path(self.text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self.where}={self.text!r}: cannot read the secret file ({exc.strerror or exc}); "
                              "fix the path or the file's permissions") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{self.where}={self.text!r}: the secret file is not UTF-8 text") from None
        value = content.rstrip("\r\n")
        if not value:
            raise ConfigError(f"{self.where}={self.text!r}: the secret file is empty; write the secret into it")
        return value


def _both_set(first: _Raw, second: _Raw) -> ConfigError:
    """A value and its _FILE form in one source: which one was meant is a guess, so neither is."""
    prefix = f"{first.origin}: " if first.origin else ""
    return ConfigError(f"{prefix}{first.name} and {second.name} are both set: keep only one of them")


def _from_flag(option: Option, args: argparse.Namespace | None) -> _Raw | None:
    value = getattr(args, option.attr, None) if args is not None else None
    return _Raw(option.flag, value) if value else None


def _from_env(option: Option, environ: Mapping[str, str]) -> _Raw | None:
    """`WIGZO_ORG_TOKEN`, or for a secret `WIGZO_ORG_TOKEN_FILE` naming a file that holds it (not both)."""
    direct = _Raw(option.env, environ[option.env]) if environ.get(option.env) else None
    file_env = f"{option.env}{SECRET_FILE_SUFFIX.upper()}"
    if not (option.secret and environ.get(file_env)):
        return direct
    from_file = _Raw(file_env, environ[file_env], from_file=True)
    if direct is not None:
        raise _both_set(direct, from_file)
    return from_file


def _toml_text(where: str, value: object, secret: bool, structured: bool = False) -> str:
    """A TOML value as the text an environment variable would hold, so one parser validates both.

    Arrays become comma-separated (`topics = ["a", "b"]` is `KAFKA_TOPICS=a,b`), booleans `true`/`false`; for a
    structured setting, tables (`[[filters]]`) become their JSON text.
    """
    if structured and (isinstance(value, dict) or (isinstance(value, list) and any(isinstance(item, dict)
                                                                                   for item in value))):
        return orjson.dumps(value).decode()
    items = value if isinstance(value, list) else [value]
    texts = []
    for item in items:
        if isinstance(item, bool):
            texts.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            texts.append(str(item))
        else:
            shown = "***" if secret else repr(value)[:80]
            raise ConfigError(f"{where}={shown} is invalid: must be a string, a number, a boolean or an array of them")
    return ",".join(texts)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`sasl.password = ...` written bare is a nested table in TOML; librdkafka wants the dotted name."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _kafka_entries(items: Iterable[tuple[str, str, str]], origin: str = "") -> dict[str, _Raw]:
    """One source's (name, label in errors, text) librdkafka settings by name; `<secret name>_file` names a file
    holding that secret.

    A name repeated in one source keeps its last value (as repeated flags do); a secret given both directly
    and as a file is an error.
    """
    entries: dict[str, _Raw] = {}
    for name, label, text in items:
        base = name.removesuffix(SECRET_FILE_SUFFIX)
        from_file = base != name and _is_kafka_secret(base)
        key = base if from_file else name
        raw = _Raw(label, text, from_file, origin)
        previous = entries.get(key)
        if previous is not None and previous.from_file != from_file:
            raise _both_set(previous, raw)
        entries[key] = raw
    return entries


def _kafka_from_env(environ: Mapping[str, str]) -> dict[str, _Raw]:
    """`KAFKA_OPT_SASL_MECHANISMS` is `sasl.mechanisms`; `KAFKA_OPT_SASL_PASSWORD_FILE` names a file holding
    `sasl.password` (only for secrets: `..._PRIVATE_KEY_FILE` is a librdkafka setting of its own)."""
    items = []
    for name, value in environ.items():
        if name.startswith(KAFKA_PASSTHROUGH_PREFIX):
            stem = name[len(KAFKA_PASSTHROUGH_PREFIX):]
            base = stem.removesuffix(SECRET_FILE_SUFFIX.upper()).lower().replace("_", ".")
            is_file = stem.endswith(SECRET_FILE_SUFFIX.upper()) and _is_kafka_secret(base)
            items.append((base + SECRET_FILE_SUFFIX if is_file else stem.lower().replace("_", "."), name, value))
    return _kafka_entries(items)


def _kafka_from_flags(args: argparse.Namespace | None) -> dict[str, _Raw]:
    items = []
    for item in (getattr(args, "kafka_config", None) or []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--kafka-config {item.split('=')[0]!r} is invalid: write it as KEY=VALUE")
        items.append((key.strip(), f"--kafka-config {key.strip()}", value))
    return _kafka_entries(items)


@dataclass(frozen=True, slots=True)
class _ConfigFile:
    """The TOML file's settings as text: keys and value types checked, values not parsed yet (an overridden
    value is never parsed, as for the environment)."""

    settings: Mapping[str, _Raw]  # by Settings attribute; a `<secret>_file` key is stored under its attribute
    kafka: Mapping[str, _Raw]  # by librdkafka name
    destinations: Mapping[str, Mapping[str, _Raw]]  # by name: its `topics` and settings by attribute

    @classmethod
    def read(cls, args: argparse.Namespace | None, environ: Mapping[str, str],
             read: dict[str, FileStamp]) -> _ConfigFile:
        """The file named by --config, else by WIGZO_PIPELINE_CONFIG; no file is an empty one."""
        flag = getattr(args, "config", None) if args is not None else None
        where, path = ("--config", flag) if flag else (CONFIG_ENV, environ.get(CONFIG_ENV, ""))
        if not path:
            return cls({}, {}, {})
        read.setdefault(path, stamp(path))
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"{where}={path!r}: cannot read the config file ({exc.strerror or exc}); "
                              "fix the path or the file's permissions") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None
        return cls.parse(path, document)

    @classmethod
    def parse(cls, path: str, document: Mapping[str, Any]) -> _ConfigFile:
        options = dict(BY_ATTR)
        file_keys = {f"{option.attr}{SECRET_FILE_SUFFIX}": option for option in OPTIONS if option.secret}
        settings: dict[str, _Raw] = {}
        for key, value in document.items():
            if key in (KAFKA_TABLE, DESTINATIONS_TABLE):
                continue
            option = options.get(key) or file_keys.get(key)
            if option is None:
                raise _unknown_setting(path, key, sorted([*options, *file_keys, KAFKA_TABLE, DESTINATIONS_TABLE]),
                                       "the settings are")
            if (raw := _file_entry(path, key, key, value, option, key in file_keys)) is not None:
                if option.attr in settings:
                    raise _both_set(settings[option.attr], raw)
                settings[option.attr] = raw
        table = document.get(KAFKA_TABLE, {})
        if not isinstance(table, dict):
            raise ConfigError(f'{path}: {KAFKA_TABLE!r} must be a table of librdkafka settings: write [{KAFKA_TABLE}] '
                              'and below it lines such as "security.protocol" = "SASL_SSL"')
        kafka = _kafka_entries(((name, f"[{KAFKA_TABLE}] {name}",
                                 _toml_text(f"{path}: [{KAFKA_TABLE}] {name}", value, _is_kafka_secret(name)))
                                for name, value in _flatten(table).items()), origin=path)
        return cls(settings, kafka, _destination_tables(path, document.get(DESTINATIONS_TABLE, {})))


def _unknown_setting(place: str, key: str, valid: list[str], listing: str) -> ConfigError:
    """A key no setting has: the closest one it may be a typo of, else every key that is valid there."""
    close = difflib.get_close_matches(key.lower(), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; {listing} {', '.join(valid)}"
    return ConfigError(f"{place}: unknown setting {key!r}{hint}")


def _file_entry(path: str, key: str, label: str, value: object, option: Option, from_file: bool) -> _Raw | None:
    """One key of the config file as the text its variable would hold; None when empty (unset)."""
    text = _toml_text(f"{path}: {label}", value, option.secret, option.structured)
    return _Raw(label, text, from_file=from_file, origin=path) if text else None


def _destination_tables(path: str, tables: object) -> dict[str, dict[str, _Raw]]:
    """The `[destinations.NAME]` tables: each one's topics and the Wigzo-side settings it overrides, as text."""
    example = (f"write each destination as a table, [{DESTINATIONS_TABLE}.NAME], holding the topics it owns "
               '(topics = ["segment-events"]) and the Wigzo settings it overrides')
    if not isinstance(tables, dict) or not all(isinstance(table, dict) for table in tables.values()):
        raise ConfigError(f"{path}: {DESTINATIONS_TABLE!r} is invalid: {example}")
    overridable = {option.attr: option for option in OPTIONS if option.destination}
    file_keys = {f"{attr}{SECRET_FILE_SUFFIX}": option for attr, option in overridable.items() if option.secret}
    parsed: dict[str, dict[str, _Raw]] = {}
    for name, table in tables.items():
        where = f"[{DESTINATIONS_TABLE}.{name}]"
        if not DESTINATION_NAME.fullmatch(name):
            raise ConfigError(f"{path}: {where}: a destination's name is 1 to 64 ASCII letters, digits, '_', '.' "
                              "or '-' (it shows in metric labels and dead-letter headers)")
        raws: dict[str, _Raw] = {}
        for key, value in table.items():
            label = f"{where} {key}"
            if key == DESTINATION_TOPICS:
                if text := _toml_text(f"{path}: {label}", value, secret=False):
                    raws[key] = _Raw(label, text, origin=path)
                continue
            option = overridable.get(key) or file_keys.get(key)
            if option is None:
                if key in BY_ATTR:
                    raise ConfigError(f"{path}: {label}: {key!r} is not a Wigzo setting, so it cannot differ per "
                                      "destination: set it at the top level")
                raise _unknown_setting(f"{path}: {where}", key,
                                       sorted([DESTINATION_TOPICS, *overridable, *file_keys]), "a destination takes")
            if (raw := _file_entry(path, key, label, value, option, key in file_keys)) is not None:
                if option.attr in raws:
                    raise _both_set(raws[option.attr], raw)
                raws[option.attr] = raw
        if DESTINATION_TOPICS not in raws:
            raise ConfigError(f"{path}: {where} owns no topics: give it topics = [...], the source topics whose "
                              "events it delivers")
        parsed[name] = raws
    return parsed


def _parse(option: Option, raw: _Raw, read: dict[str, FileStamp]) -> Any:
    """One setting's value from its text; the file it names (an event-name map, a CA bundle) is stamped first."""
    text = raw.value(read)
    if option.names_file is not None and (named := option.names_file(text)) is not None:
        read.setdefault(named, stamp(named))
    try:
        return option.parse(text)
    except (ValueError, OSError) as exc:
        shown = "***" if option.secret else repr(text)[:80]
        raise ConfigError(f"{raw.where}={shown} is invalid: {exc}") from None


def _destination(name: str, raws: Mapping[str, _Raw], read: dict[str, FileStamp]) -> DestinationTable:
    topics = _csv(raws[DESTINATION_TOPICS].value())
    for entry in topics:
        if entry.startswith("^"):
            try:
                re.compile(entry)
            except re.error as exc:
                raise ConfigError(f"{raws[DESTINATION_TOPICS].where}: {entry!r} is not a regular expression "
                                  f"({exc})") from None
    settings = {attr: raw for attr, raw in raws.items() if attr != DESTINATION_TOPICS}
    return DestinationTable(name, topics, {attr: _parse(BY_ATTR[attr], raw, read) for attr, raw in settings.items()},
                            {attr: raw.text for attr, raw in settings.items() if raw.from_file})


def _refuse_shared_topics(tables: Sequence[DestinationTable]) -> None:
    """A topic owned by two destinations is a mistake: name both. Two patterns can only be compared on a topic
    they both match (`route` refuses it then); a pattern and a name are compared now."""
    for index, first in enumerate(tables):
        for second in tables[index + 1:]:
            for mine in first.topics:
                for theirs in second.topics:
                    if mine == theirs or owns(mine, theirs) or owns(theirs, mine):
                        raise ConfigError(f"[{DESTINATIONS_TABLE}.{first.name}] ({mine}) and "
                                          f"[{DESTINATIONS_TABLE}.{second.name}] ({theirs}) both own topic "
                                          f"{min(mine, theirs, key=len)!r}: {_ONE_OWNER}")


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from flag, then environment, then config file, then default; an empty value is unset.
    A `[destinations.NAME]` table's settings override the resolved ones for its topics.

    Raise ConfigError naming the source (and showing `***` for a secret's value).
    """
    environ = os.environ if environ is None else environ
    read: dict[str, FileStamp] = {}
    config_file = _ConfigFile.read(args, environ, read)
    values: dict[str, Any] = {}
    secret_files: dict[str, str] = {}
    for option in OPTIONS:
        raw = _from_flag(option, args) or _from_env(option, environ) or config_file.settings.get(option.attr)
        if raw is None:
            continue  # Settings' own default
        values[option.attr] = _parse(option, raw, read)
        if raw.from_file:
            secret_files[option.attr] = raw.text
    merged = {**config_file.kafka, **_kafka_from_env(environ), **_kafka_from_flags(args)}
    kafka_config: dict[str, str | Secret] = {}
    for key, raw in merged.items():
        text = raw.value(read)
        kafka_config[key] = Secret(text) if _is_kafka_secret(key) else text
    destinations = tuple(_destination(name, raws, read) for name, raws in config_file.destinations.items())
    if destinations:
        if "topics" in values:
            raise ConfigError(f"KAFKA_TOPICS (topics) is set, and so is [{DESTINATIONS_TABLE}]: with destinations, "
                              "each one's table lists the topics it owns; remove KAFKA_TOPICS")
        _refuse_shared_topics(destinations)
        values["topics"] = tuple(dict.fromkeys(entry for table in destinations for entry in table.topics))
    return Settings(**values, kafka_config=kafka_config, destinations=destinations, secret_files=secret_files,
                    read_from=tuple(read.items()))


def read_secret_file(path: str, where: str) -> Secret:
    """A credential from its file, read as `load_settings` reads it (for the Wigzo client's re-read of its
    tokens when Wigzo rejects them). Raises ConfigError when the file is missing, unreadable or empty."""
    return Secret(_Raw(where, path, from_file=True).value())
