"""The dry run: JSON lines in, one decision per line out, through the consumer's own decoder and mapping."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.model import PipelineError
from pipeline.ops import dry_run as transform

# The seed's `analytics.track('Product Viewed', productData, options)` as analytics.js sends it from a product page.
SEED_PRODUCT_VIEWED: dict[str, Any] = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "ajs-3f1b6c0e8d2a4f7b9c15e2d4a6b8c0e1",
    "anonymousId": "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    "timestamp": "2024-08-09T10:15:00.000Z",
    "channel": "browser",
    "properties": {"product_id": "40", "category": "Mobile Phones", "name": "iPhone", "brand": "Apple",
                   "price": 18.99, "currency": "usd"},
    "context": {"library": {"name": "analytics.js", "version": "4.15.3"},
                "page": {"url": "https://my-site.com/iphone", "path": "/iphone", "title": "iPhone"}},
    "integrations": {"wigzo": {"imageUrl": "https://my-site.com/image/cache/iphone_1-228x228.jpg",
                               "description": "iPhone is a revolutionary new mobile phone", "language": "en"}},
}

SEED_OUTPUT = {"outcome": "deliver", "requests": [{
    "method": "POST",
    "url": "https://app.wigzo.com/rest/v1/learn/event?token=***&org_token=***",
    "json": {"eventName": "product_view",
             "eventval": {"productId": "40", "canonicalUrl": "https://my-site.com/iphone", "title": "iPhone",
                          "description": "iPhone is a revolutionary new mobile phone", "price": 18.99,
                          "currency": "usd", "image": "https://my-site.com/image/cache/iphone_1-228x228.jpg",
                          "category": "Mobile Phones", "language": "en", "vendor": "Apple"},
             "eventCategory": "EXTERNAL", "userId": "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b", "source": "web"}}]}

ORG, API = "org-Zq81", "api-Kx42"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WIGZO_ORG_TOKEN", "WIGZO_API_TOKEN", "WIGZO_BASE_URL", "WIGZO_EVENT_MAP", "INPUT_FORMAT",
                 "KAFKA_TOPICS", "WIGZO_CONSENT_CATEGORIES", "WIGZO_CONSENT_MISSING", "WIGZO_FILTERS"):
        monkeypatch.delenv(name, raising=False)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    transform.add_arguments(parser)
    return transform.main(parser.parse_args(argv))


def lines(events: list[Any]) -> bytes:
    return b"".join((event if isinstance(event, bytes) else orjson.dumps(event)) + b"\n" for event in events)


def outputs(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_seed_product_viewed_becomes_a_product_view(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([SEED_PRODUCT_VIEWED]))
    assert run([str(events), "--wigzo-org-token", ORG, "--wigzo-api-token", API]) == 0
    assert outputs(capsys) == [SEED_OUTPUT]


@pytest.mark.parametrize("argv", [["-"], []])
def test_reads_standard_input_when_file_is_dash_or_omitted(argv, monkeypatch, capsys):
    monkeypatch.setenv("WIGZO_ORG_TOKEN", ORG)
    stdin = lines([SEED_PRODUCT_VIEWED, b"", SEED_PRODUCT_VIEWED])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    assert run(argv) == 0
    printed = outputs(capsys)
    assert len(printed) == 2
    assert printed[0]["requests"][0]["url"] == "https://app.wigzo.com/rest/v1/learn/event?org_token=***"


def test_every_outcome_has_its_line_in_input_order(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([
        {**SEED_PRODUCT_VIEWED, "integrations": {"Wigzo": False}},
        {**SEED_PRODUCT_VIEWED, "properties": {"name": "iPhone"}},
        {"type": "screen", "name": "Home", "messageId": "m-2", "userId": "u-1"},
        b"{not json",
        {"type": "track", "messageId": "m-3", "userId": "u-1"},
    ]))
    assert run([str(events)]) == 0
    skipped, unmapped, screen, undecodable, invalid = outputs(capsys)
    assert skipped == {"outcome": "skip", "reason": "integrations.Wigzo is false"}
    assert unmapped["outcome"] == "dead_letter" and unmapped["stage"] == "mapping"
    assert "product id" in unmapped["reason"] and "properties.product_id" in unmapped["reason"]
    assert screen == {"outcome": "skip", "reason": "Wigzo does not take screen calls"}
    assert undecodable["outcome"] == "dead_letter" and undecodable["stage"] in ("decode", "validate")
    assert invalid["outcome"] == "dead_letter" and invalid["stage"] == "validate"


def test_secrets_never_appear_and_the_base_url_is_configurable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WIGZO_API_TOKEN", API)
    monkeypatch.setenv("WIGZO_BASE_URL", "http://127.0.0.1:8080/")
    identify = {"type": "identify", "messageId": "m-1", "userId": "u-1", "traits": {"email": "ann@example.com"}}
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([identify]))
    assert run([str(events), "--wigzo-org-token", ORG]) == 0
    out = capsys.readouterr().out
    assert ORG not in out and API not in out
    assert orjson.loads(out)["requests"][0]["url"] == \
        "http://127.0.0.1:8080/rest/v1/learn/identify?token=***&org_token=***"


def test_event_map_from_configuration_applies(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([{"type": "track", "event": "Signed Up", "messageId": "m-1", "userId": "u-1"},
                              {"type": "track", "event": "Heartbeat", "messageId": "m-2", "userId": "u-1"}]))
    assert run([str(events), "--event-map", '{"Signed Up": "signup", "Heartbeat": null}']) == 0
    renamed, skipped = outputs(capsys)
    assert renamed["requests"][0]["json"]["eventName"] == "signup"
    assert skipped == {"outcome": "skip", "reason": "event name map skips 'Heartbeat'"}


def test_with_several_destinations_the_events_go_through_the_one_chosen(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text("""
[destinations.brand_a]
topics = ["segment-brand-a"]
event_name_map = '{"Signed Up": "signup"}'
[destinations.brand_b]
topics = ["segment-brand-b", "^segment-brand-b-.*"]
wigzo_base_url = "https://eu.example-wigzo-host"
event_name_map = '{"Signed Up": "registered"}'
""")
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([{"type": "track", "event": "Signed Up", "messageId": "m-1", "userId": "u-1"}]))
    shown = {}
    for choice in (["--destination", "brand_a"], ["--destination", "brand_b"], ["--topic", "segment-brand-b-eu"]):
        assert run([str(events), "--config", str(config), *choice]) == 0
        (request,) = orjson.loads(capsys.readouterr().out)["requests"]
        shown[choice[1]] = (request["json"]["eventName"], request["url"].split("/rest/")[0])
    assert shown == {"brand_a": ("signup", "https://app.wigzo.com"),
                     "brand_b": ("registered", "https://eu.example-wigzo-host"),
                     "segment-brand-b-eu": ("registered", "https://eu.example-wigzo-host")}
    with pytest.raises(PipelineError, match=r"2 destinations \(brand_a, brand_b\): choose one with --destination"):
        run([str(events), "--config", str(config)])
    with pytest.raises(PipelineError, match="--destination 'brand_c': no such destination"):
        run([str(events), "--config", str(config), "--destination", "brand_c"])
    with pytest.raises(PipelineError, match="topic 'other' belongs to no destination"):
        run([str(events), "--config", str(config), "--topic", "other"])


def test_unreadable_file_is_a_usage_error_not_a_traceback(tmp_path):
    with pytest.raises(PipelineError, match="cannot read .*missing.jsonl: No such file"):
        run([str(tmp_path / "missing.jsonl")])


def test_documented_worked_example_is_this_real_output():
    docs = (Path(__file__).parents[2] / "docs" / "mapping.md").read_text()
    assert json.dumps(SEED_PRODUCT_VIEWED, indent=2) in docs
    assert orjson.dumps(SEED_OUTPUT).decode() in docs


# --- privacy: consent and destination filters say which of them decided, and why -----------------------------

PRIVACY_DOC = Path(__file__).parents[2] / "docs" / "privacy.md"


def _doc_block(doc: str, after: str, fence: str) -> str:
    """The fenced block that follows `after` in the doc."""
    return doc.split(after, 1)[1].split(fence + "\n", 1)[1].split("```", 1)[0]


def test_the_privacy_worked_example_is_this_real_output(tmp_path, capsys, monkeypatch):
    doc = PRIVACY_DOC.read_text()
    filters = tmp_path / "filters.json"
    filters.write_text(_doc_block(doc, "exported as\n`filters.json`:", "```json"))
    events = tmp_path / "events.jsonl"
    events.write_text(_doc_block(doc, "`events.jsonl`:", "```"))
    monkeypatch.setenv("WIGZO_CONSENT_CATEGORIES", "Advertising")
    monkeypatch.setenv("WIGZO_FILTERS", str(filters))
    assert run([str(events)]) == 0
    printed = capsys.readouterr().out
    console = _doc_block(doc, "$ wigzo-pipeline transform events.jsonl", "")
    assert printed == console, "docs/privacy.md's worked example no longer matches what transform prints"
    delivered, debug, refused, kept, sampled = (orjson.loads(line) for line in printed.splitlines())
    assert "email" not in str(delivered["requests"]) and "email" not in str(kept["requests"])
    assert (debug["reason"], refused["reason"], sampled["reason"]) == (
        "filter: no debug events", "consent: Advertising not granted", "filter: half of newsletter signups")


def test_without_consent_or_filters_there_is_no_privacy_part(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(lines([SEED_PRODUCT_VIEWED]))
    assert run([str(events)]) == 0
    assert "privacy" not in outputs(capsys)[0]
