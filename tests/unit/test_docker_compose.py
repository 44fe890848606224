"""No Docker engine runs here, so the compose file is checked statically against what the code reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_service_has_an_image_or_a_build() -> None:
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").exists()


def test_pipeline_gets_the_configuration_it_needs() -> None:
    env = SERVICES["pipeline"]["environment"]
    known = {option.env for option in OPTIONS}
    assert {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPICS", "KAFKA_GROUP_ID", "WIGZO_BASE_URL", "WIGZO_ORG_TOKEN"} <= set(env)
    assert set(env) <= known, f"variables the code does not read: {set(env) - known}"


def _advertised(kafka: dict) -> dict[str, str]:
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return {entry.split("://")[0]: entry.split("://")[1] for entry in listeners}


def test_services_reach_kafka_through_an_advertised_listener() -> None:
    kafka = SERVICES["kafka"]
    advertised = _advertised(kafka)
    bootstrap = SERVICES["pipeline"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap in advertised.values(), "the pipeline must bootstrap through an advertised listener"
    host = bootstrap.split(":")[0]
    assert host in SERVICES, "the advertised in-network host must be the kafka service name"
    published = {port.split(":")[0] for port in kafka["ports"]}
    external = [addr for addr in advertised.values() if addr.startswith("localhost:")]
    assert external and external[0].split(":")[1] in published, "the host listener must be published"
    protocol_map = dict(p.split(":") for p in kafka["environment"]["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) <= set(protocol_map)


def test_pipeline_points_at_the_sandbox_service() -> None:
    base_url = SERVICES["pipeline"]["environment"]["WIGZO_BASE_URL"]
    assert "sandbox:8080" in base_url
    assert "8080" in " ".join(SERVICES["sandbox"]["command"])
