"""Settings read again while running (pipeline.live): the file watcher (rewrites, Kubernetes' `..data` symlink
swap), and a reload that is checked whole, keeps what needs a restart, applies the rest and says which keys
changed, never their values."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pipeline.config import ConfigError, Settings, SettingsSource, load_settings
from pipeline.live import Changes, FileWatcher, LiveSettings, kept_restart_only, live_changes, restart_only_changes
from pipeline.model import Secret
from tests.fakes.clock import SimulatedClock

TOKEN = "live-token-1f2e3d"
NEW_TOKEN = "live-token-9a8b7c"


class RecordingTarget:
    """What a reload would change: records what it was asked to prepare and apply."""

    def __init__(self) -> None:
        self.prepared: list[Settings] = []
        self.applied: list[tuple[Settings, Changes, Collection[Secret]]] = []
        self.refuse: ConfigError | None = None

    def prepare(self, settings: Settings) -> str:
        if self.refuse is not None:
            raise self.refuse
        self.prepared.append(settings)
        return "prepared"

    def apply(self, settings: Settings, prepared: Any, changes: Changes, secrets: Collection[Secret]) -> None:
        assert prepared == "prepared"
        self.applied.append((settings, changes, secrets))


def _write(path: Path, text: str) -> None:
    """Rewrite in place; the test never waits for the clock to tick: the size or inode tells."""
    path.write_text(text)


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org-token").write_text(TOKEN + "\n")
    (tmp_path / "map.json").write_text('{"Signed Up": "signup"}')
    (tmp_path / "config.toml").write_text('wigzo_org_token_file = "org-token"\nevent_name_map = "map.json"\n'
                                          'topics = ["segment-events"]\n')
    return tmp_path


@pytest.fixture
def environ(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from the config file (SettingsSource reads the process's environment)."""
    for name in [name for name in os.environ if name.startswith(("WIGZO_", "KAFKA_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WIGZO_PIPELINE_CONFIG", str(files / "config.toml"))


def _reloads(result: str) -> float:
    return REGISTRY.get_sample_value("wigzo_pipeline_config_reloads_total", {"result": result}) or 0.0


def test_the_watcher_sees_a_rewrite_only_once_its_interval_has_passed(files: Path) -> None:
    clock = SimulatedClock()
    settings = load_settings(None, {"WIGZO_PIPELINE_CONFIG": "config.toml"})
    watcher = FileWatcher(settings.read_from, interval=2.0, clock=clock)
    assert {path for path, _ in settings.read_from} == {"config.toml", "org-token", "map.json"}
    _write(files / "org-token", NEW_TOKEN + "\n")
    assert watcher.changed() == [], "not before the interval"
    clock.now += 2.0
    assert watcher.changed() == ["org-token"]
    clock.now += 2.0
    assert watcher.changed() == [], "said once"


def test_the_watcher_sees_a_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    """A mounted Secret is `token -> ..data/token`, `..data -> ..<timestamp>`: an update writes a new timestamped
    directory and swaps `..data`. The new file may have the same size and even the same mtime."""
    first, second = tmp_path / "..2024_01_01", tmp_path / "..2024_02_01"
    first.mkdir()
    second.mkdir()
    (first / "token").write_text("same-size-1")
    (second / "token").write_text("same-size-2")
    os.utime(second / "token", ns=(os.stat(first / "token").st_atime_ns, os.stat(first / "token").st_mtime_ns))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "token").symlink_to("..data/token")
    clock = SimulatedClock()
    settings = load_settings(None, {"WIGZO_ORG_TOKEN_FILE": str(tmp_path / "token")})
    watcher = FileWatcher(settings.read_from, interval=2.0, clock=clock)
    swapped = tmp_path / "..data_tmp"
    swapped.symlink_to(second.name)
    swapped.replace(tmp_path / "..data")  # the atomic rename Kubernetes does
    clock.now += 2.0
    assert watcher.changed() == [str(tmp_path / "token")]


def test_a_changed_token_and_map_are_applied_and_named_without_their_values(
        files: Path, environ: None, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings()
    target = RecordingTarget()
    live = LiveSettings(SettingsSource(), settings, target, watcher=FileWatcher(settings.read_from, interval=2.0,
                                                                              clock=SimulatedClock()))
    applied = _reloads("applied")
    _write(files / "org-token", NEW_TOKEN + "\n")
    _write(files / "map.json", '{"Signed Up": "registered"}')
    with caplog.at_level(logging.INFO, logger="pipeline.live"):
        assert live.reload() == "applied"
    (new, changes, secrets), = target.applied
    assert changes == {"default": frozenset({"wigzo_org_token", "event_name_map"})}
    assert new.wigzo_org_token == Secret(NEW_TOKEN) and new.event_name_map == {"Signed Up": "registered"}
    assert {Secret(TOKEN), Secret(NEW_TOKEN)} <= set(secrets), "the old token stays scrubbed too"
    assert live.settings is new and live.generation == 1
    assert REGISTRY.get_sample_value("wigzo_pipeline_config_generation") == 1.0
    assert _reloads("applied") == applied + 1
    line = next(record.getMessage() for record in caplog.records if "generation 1" in record.getMessage())
    assert "event_name_map" in line and "wigzo_org_token" in line
    assert NEW_TOKEN not in caplog.text and "registered" not in caplog.text


def test_an_invalid_file_keeps_the_running_settings_and_says_which_file_and_key(
        files: Path, environ: None, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings()
    target = RecordingTarget()
    live = LiveSettings(SettingsSource(), settings, target)
    rejected = _reloads("rejected")
    _write(files / "config.toml", 'wigzo_org_token_file = "org-token"\nmax_in_flight = 0\n')
    with caplog.at_level(logging.ERROR, logger="pipeline.live"):
        assert live.reload() == "rejected"
    assert target.applied == [] and live.settings is settings and live.generation == 0
    assert _reloads("rejected") == rejected + 1
    (error,) = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "config.toml: max_in_flight='0' is invalid" in error.getMessage()


def test_settings_the_target_cannot_work_with_are_rejected_before_anything_changes(
        files: Path, environ: None) -> None:
    settings = load_settings()
    target = RecordingTarget()
    target.refuse = ConfigError("WIGZO_BASE_URL='ftp://x' is invalid")
    live = LiveSettings(SettingsSource(), settings, target)
    _write(files / "org-token", NEW_TOKEN)
    assert live.reload() == "rejected"
    assert target.applied == [] and live.settings is settings


def test_nothing_changed_is_counted_unchanged_and_applies_nothing(files: Path, environ: None) -> None:
    settings = load_settings()
    target = RecordingTarget()
    live = LiveSettings(SettingsSource(), settings, target)
    unchanged = _reloads("unchanged")
    assert live.reload() == "unchanged"
    assert target.applied == [] and live.generation == 0 and _reloads("unchanged") == unchanged + 1


def test_a_restart_only_change_keeps_its_running_value_and_warns_once_naming_the_key(
        files: Path, environ: None, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings()
    target = RecordingTarget()
    live = LiveSettings(SettingsSource(), settings, target)
    _write(files / "config.toml", 'wigzo_org_token_file = "org-token"\nevent_name_map = "map.json"\n'
                                  'topics = ["other-topic"]\ngroup_id = "another-group"\nmax_attempts = 3\n'
                                  '[kafka]\n"client.id" = "renamed"\n')
    with caplog.at_level(logging.WARNING, logger="pipeline.live"):
        assert live.reload() == "applied"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [line.split(": ", 1)[1].split(" changed")[0] for line in warnings] == [
        "topics (KAFKA_TOPICS)", "group_id (KAFKA_GROUP_ID)", "[kafka] client.id"]
    assert all(line.endswith("takes effect only on restart: the running value stays") for line in warnings)
    (new, changes, _), = target.applied
    assert (new.topics, new.group_id, dict(new.kafka_config)) == (("segment-events",), settings.group_id, {})
    assert new.max_attempts == 3 and changes == {"default": frozenset({"max_attempts"})}


def test_the_log_level_is_live(files: Path, environ: None) -> None:
    settings = load_settings()
    live = LiveSettings(SettingsSource(), settings, RecordingTarget())
    root = logging.getLogger()
    level = root.level
    try:
        _write(files / "config.toml", 'wigzo_org_token_file = "org-token"\nevent_name_map = "map.json"\n'
                                      'topics = ["segment-events"]\nlog_level = "DEBUG"\n')
        assert live.reload() == "applied"
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)


def test_a_poll_reloads_when_asked_or_when_a_file_changed(files: Path, environ: None) -> None:
    clock = SimulatedClock()
    settings = load_settings()
    target = RecordingTarget()
    live = LiveSettings(SettingsSource(), settings, target,
                        watcher=FileWatcher(settings.read_from, interval=2.0, clock=clock))
    live.poll()
    assert target.prepared == [], "nothing asked, no file changed"
    live.request()  # SIGHUP
    live.poll()
    assert len(target.prepared) == 1 and target.applied == []
    _write(files / "map.json", '{"Signed Up": "registered"}')
    clock.now += 2.0
    live.poll()
    assert len(target.applied) == 1


DESTINATIONS = '''
[destinations.brand_a]
topics = ["segment-brand-a"]
wigzo_org_token_file = "a-token"

[destinations.brand_b]
topics = ["segment-brand-b", "^segment-brand-b-.*"]
wigzo_base_url = "https://eu.example-wigzo-host"
wigzo_org_token_file = "b-token"
'''


def test_per_destination_changes_name_the_destination_and_a_new_one_waits_for_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-token").write_text("token-a")
    (tmp_path / "b-token").write_text("token-b")
    (tmp_path / "config.toml").write_text(DESTINATIONS)
    environ = {"WIGZO_PIPELINE_CONFIG": "config.toml"}
    current = load_settings(None, environ)
    (tmp_path / "b-token").write_text("token-b2")
    (tmp_path / "config.toml").write_text(DESTINATIONS.replace('topics = ["segment-brand-a"]',
                                                               'topics = ["segment-brand-a", "more"]')
                                          + '[destinations.brand_c]\ntopics = ["c"]\nwigzo_org_token = "t"\n')
    new = load_settings(None, environ)
    effective = kept_restart_only(current, new)
    assert [name for name, _ in effective.for_destinations()] == ["brand_a", "brand_b"]
    assert dict(effective.for_destinations())["brand_a"].topics == ("segment-brand-a",)
    assert live_changes(current, effective) == {"brand_b": frozenset({"wigzo_org_token"})}
    assert restart_only_changes(current, new) == ["[destinations.brand_a] topics", "[destinations.brand_c] (added)"]


def test_a_ca_bundle_rewritten_in_place_counts_as_changed(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("first CA")
    environ = {"WIGZO_CA_BUNDLE": str(tmp_path / "ca.pem"), "WIGZO_ORG_TOKEN": TOKEN}
    current = load_settings(None, environ)
    (tmp_path / "ca.pem").write_text("the second CA")
    assert live_changes(current, load_settings(None, environ)) == {"default": frozenset({"ca_bundle"})}
