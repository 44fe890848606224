"""Settings that change while a member runs: read again on SIGHUP, or when a file they were read from changes.

The files are the config file, every `*_FILE` secret, the event-name map, the filters and the CA bundle. A
`FileWatcher` compares each one's stamp (resolved target, mtime, inode, size) every couple of seconds, so a
rewrite is noticed without a signal, and so is a Kubernetes update of a mounted Secret or ConfigMap, which
swaps a `..data` symlink. A reload reads every source again with the same loader as at start (flags, the
environment, the config file, the secret files), checks the result whole, then applies what changed:

- invalid settings change nothing: one ERROR names the file and the key, `..._config_reloads_total` counts it
  `rejected`, and the running settings keep delivering;
- a setting that only takes effect on restart (`Option.live` false: Kafka, topics, workers, metrics port...)
  keeps its running value, said in one WARNING per key;
- the live ones (every Wigzo-side setting, per destination, and the log level) are applied between two polls
  of the consume loop (`Reload.poll`), so no rebalance happens and nothing is read twice or skipped; an INFO
  line names the keys that changed, never their values, and `..._config_generation` counts the reloads that
  changed something.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, Protocol

from pipeline.config import (
    DEFAULT_DESTINATION,
    DESTINATIONS_TABLE,
    KAFKA_TABLE,
    OPTIONS,
    ConfigError,
    FileStamp,
    Settings,
    SettingsSource,
    stamp,
)
from pipeline.model import Secret
from pipeline.telemetry import metrics
from pipeline.telemetry.logs import reconfigure_logging

log = logging.getLogger(__name__)

WATCH_INTERVAL = 2.0  # seconds between two looks at the files: a change takes effect within this (and a poll)
RESTART_ONLY = tuple(option for option in OPTIONS if not option.live)
PER_DESTINATION = tuple(option for option in OPTIONS if option.destination)
MEMBER_WIDE_LIVE = tuple(option for option in OPTIONS if option.live and not option.destination)

Changes = Mapping[str, frozenset[str]]  # destination name -> the Wigzo-side keys that changed


class Target(Protocol):
    """What a reload changes (pipeline.kafka.runner builds it over the running parts)."""

    def prepare(self, settings: Settings) -> Any:
        """Everything the settings need, made and checked before anything changes; ConfigError if they cannot
        work."""

    def apply(self, settings: Settings, prepared: Any, changes: Changes, secrets: Collection[Secret]) -> None:
        """Put them in force. `secrets`: every credential this member has been given, old and new, for the
        scrubbers (an old token may still turn up in an answer)."""


class FileWatcher:
    """Tells, at most every `interval` seconds, which of the files settings were read from changed since it
    last looked."""

    def __init__(self, read_from: Collection[tuple[str, FileStamp]], *, interval: float = WATCH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._stamps = dict(read_from)
        self._next = clock() + interval

    def watch(self, read_from: Collection[tuple[str, FileStamp]]) -> None:
        """These files, as they were when read (a file read by the reload may have changed since: it is seen)."""
        self._stamps = dict(read_from)

    def changed(self) -> list[str]:
        """The files that changed since the last look (none before `interval` has passed)."""
        now = self._clock()
        if now < self._next:
            return []
        self._next = now + self._interval
        changed = []
        for path, before in self._stamps.items():
            if (now_stamp := stamp(path)) != before:
                self._stamps[path] = now_stamp
                changed.append(path)
        return changed


class LiveSettings:
    """The running settings, read again when asked (`request`, from SIGHUP) or when a file changed; `poll` is
    called by the consume loop between polls and does the reload there."""

    def __init__(self, source: SettingsSource, settings: Settings, target: Target, *,
                 watcher: FileWatcher | None = None) -> None:
        self._source = source
        self.settings = settings
        self._target = target
        self._watcher = watcher or FileWatcher(settings.read_from)
        self._requested = threading.Event()
        self._secrets: set[Secret] = {secret for secret in settings.secrets() if secret}
        self.generation = 0
        metrics.CONFIG_GENERATION.set(0)

    def request(self) -> None:
        """Reload at the next poll (safe from a signal handler)."""
        self._requested.set()

    def poll(self) -> None:
        changed = self._watcher.changed()
        if changed or self._requested.is_set():
            self._requested.clear()
            self.reload(because="SIGHUP" if not changed else f"{', '.join(changed)} changed")

    def reload(self, because: str = "asked") -> str:
        """Read, check and apply the settings again: `applied`, `unchanged` or `rejected`."""
        current = self.settings
        try:
            new = self._source.load()
            new.require_org_token()
            effective = kept_restart_only(current, new)
            prepared = self._target.prepare(effective)
        except ConfigError as exc:
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            log.error("settings reload (%s) rejected, the running settings stay: %s", because, exc)
            return "rejected"
        for key in restart_only_changes(current, new):
            log.warning("settings reload: %s changed, but takes effect only on restart: the running value stays",
                        key)
        self._watcher.watch(effective.read_from)
        changes = live_changes(current, effective)
        member_wide = [option.attr for option in MEMBER_WIDE_LIVE
                       if getattr(current, option.attr) != getattr(effective, option.attr)]
        self.settings = effective
        if not changes and not member_wide:
            metrics.CONFIG_RELOADS.labels("unchanged").inc()
            log.info("settings reload (%s): nothing that takes effect while running changed", because)
            return "unchanged"
        self._secrets.update(secret for secret in effective.secrets() if secret)
        self._target.apply(effective, prepared, changes, frozenset(self._secrets))
        reconfigure_logging(effective.log_level, self._secrets)
        self.generation += 1
        metrics.CONFIG_GENERATION.set(self.generation)
        metrics.CONFIG_RELOADS.labels("applied").inc()
        log.info("settings reloaded (%s), generation %d: %s changed", because, self.generation,
                 describe(changes, member_wide))
        return "applied"


def kept_restart_only(current: Settings, new: Settings) -> Settings:
    """`new`, with the running value of every setting that takes effect only on restart: Kafka's, the topics,
    and which destinations there are (each keeps its topics; one that is gone keeps its running settings)."""
    tables = {table.name: table for table in new.destinations}
    kept = tuple(replace(tables[table.name], topics=table.topics) if table.name in tables else table
                 for table in current.destinations)
    return replace(new, **{option.attr: getattr(current, option.attr) for option in RESTART_ONLY},
                   kafka_config=current.kafka_config, destinations=kept)


def restart_only_changes(current: Settings, new: Settings) -> list[str]:
    """The keys whose change waits for a restart, as the config file names them (with their variable)."""
    keys = [f"{option.attr} ({option.env})" for option in RESTART_ONLY
            if getattr(current, option.attr) != getattr(new, option.attr)
            and not (option.attr == "topics" and (current.destinations or new.destinations))]
    keys += [f"[{KAFKA_TABLE}] {name}" for name in sorted(set(current.kafka_config) | set(new.kafka_config))
             if current.kafka_config.get(name) != new.kafka_config.get(name)]
    before = {table.name: table.topics for table in current.destinations}
    after = {table.name: table.topics for table in new.destinations}
    for name in sorted(set(before) | set(after)):
        if name not in after:
            keys.append(f"[{DESTINATIONS_TABLE}.{name}] (removed)")
        elif name not in before:
            keys.append(f"[{DESTINATIONS_TABLE}.{name}] (added)")
        elif before[name] != after[name]:
            keys.append(f"[{DESTINATIONS_TABLE}.{name}] topics")
    return keys


def live_changes(current: Settings, new: Settings) -> dict[str, frozenset[str]]:
    """By destination, the Wigzo-side keys that changed; `ca_bundle` also when its file changed (a new CA in
    the same place is a change of trust)."""
    files_before, files_now = dict(current.read_from), dict(new.read_from)
    before = dict(current.for_destinations())
    changes = {}
    for name, settings in new.for_destinations():
        old = before[name]
        keys = {option.attr for option in PER_DESTINATION
                if getattr(old, option.attr) != getattr(settings, option.attr)}
        if settings.ca_bundle and files_before.get(settings.ca_bundle) != files_now.get(settings.ca_bundle):
            keys.add("ca_bundle")
        if keys:
            changes[name] = frozenset(keys)
    return changes


def describe(changes: Changes, member_wide: Collection[str]) -> str:
    """The keys that changed, each with the destinations it changed for when there are several; no value."""
    by_key: dict[str, list[str]] = {}
    for name, keys in changes.items():
        for key in keys:
            by_key.setdefault(key, []).append(name)
    named = len({name for names in by_key.values() for name in names}) > 1 or any(
        name != DEFAULT_DESTINATION for names in by_key.values() for name in names)
    parts = [f"{key} ({', '.join(sorted(names))})" if named else key for key, names in sorted(by_key.items())]
    return ", ".join([*sorted(member_wide), *parts])
