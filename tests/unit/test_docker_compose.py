"""The compose file and the Dockerfile, checked with no engine: the compose file against the image it builds (the
commands its ENTRYPOINT accepts, the variables they read, the ports they listen on), the Dockerfile against how the
package must be built and installed. deploy/image_test.py builds and runs the image itself."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from pipeline.cli import COMMANDS, build_parser
from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# the services that run our image, i.e. read our settings
OURS = {name: service for name, service in SERVICES.items() if "build" in service}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


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


def _environment_of(service: dict) -> dict[str, str]:
    """The service's environment with compose's `${VAR:-default}` taking its default (nothing exported)."""
    return {name: INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))
            for name, value in service.get("environment", {}).items()}


def _settings_of(service: dict) -> Settings:
    """The service's settings as the code resolves them, so a value the code would reject fails here with the
    code's own message."""
    return load_settings(None, environ=_environment_of(service))


def _command_of(service: dict) -> argparse.Namespace:
    """The service's command as the image's ENTRYPOINT, wigzo-pipeline, parses it: argparse exits (failing the
    test) on an unknown command or flag."""
    command = service["command"]
    assert command[0] in COMMANDS, f"wigzo-pipeline has no command {command[0]!r}"
    return build_parser(command[0]).parse_args(command)


def test_docker_compose_up_brings_up_kafka_the_sandbox_the_samples_and_the_pipeline() -> None:
    assert {"kafka", "sandbox", "produce-sample", "pipeline"} <= set(SERVICES)


def test_our_services_set_only_variables_the_code_reads_with_values_it_accepts() -> None:
    known = {option.env for option in OPTIONS}
    for name, service in OURS.items():
        unknown = {env for env in service.get("environment", {})
                   if env not in known and not env.startswith(KAFKA_PASSTHROUGH_PREFIX)}
        assert not unknown, f"{name}: variables the code does not read: {unknown}"
        _settings_of(service)


def test_every_command_is_one_the_images_entrypoint_accepts() -> None:
    assert [arguments for keyword, arguments in FINAL if keyword == "ENTRYPOINT"][-1] == '["wigzo-pipeline"]', \
        "the services' commands are wigzo-pipeline's arguments"
    for service in OURS.values():
        _command_of(service)


def test_our_services_publish_only_the_port_they_listen_on() -> None:
    listening = {"pipeline": _settings_of(SERVICES["pipeline"]).metrics_port,
                 "sandbox": _command_of(SERVICES["sandbox"]).port}
    for name, service in OURS.items():
        published = {str(mapping).rsplit(":", 1)[-1] for mapping in service.get("ports", [])}
        assert published <= {str(listening.get(name))}, f"{name} publishes {published} but listens on {listening}"


def test_the_sandbox_listens_where_the_pipeline_calls_it() -> None:
    sandbox = _command_of(SERVICES["sandbox"])
    assert sandbox.host == "0.0.0.0", "on 127.0.0.1 it is out of reach of the pipeline's container and the host"
    url = urlsplit(_settings_of(SERVICES["pipeline"]).wigzo_base_url)
    assert (url.scheme, url.hostname, url.port) == ("http", "sandbox", sandbox.port)


def test_the_sandbox_reads_its_variables_and_requires_the_token_the_pipeline_sends() -> None:
    from pipeline.dev.sandbox import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    reads = set(re.findall(r"\[env\s+(\w+)\]", parser.format_help()))
    environment = _environment_of(SERVICES["sandbox"])
    assert reads and set(environment) <= reads, f"the sandbox reads {reads}, not {set(environment) - reads}"
    assert environment["WIGZO_ORG_TOKEN"] == _settings_of(SERVICES["pipeline"]).wigzo_org_token.reveal() != "", \
        "the sandbox would answer the pipeline's every request 401"


def test_every_kafka_client_bootstraps_through_the_in_network_listener() -> None:
    advertised = _advertised(SERVICES["kafka"])
    for name, service in OURS.items():
        if "KAFKA_BOOTSTRAP_SERVERS" in service.get("environment", {}):
            assert _settings_of(service).bootstrap_servers == advertised["INTERNAL"], name


def test_produce_sample_runs_once_after_kafka_is_healthy_onto_the_pipelines_topic() -> None:
    service = SERVICES["produce-sample"]
    command = service["command"]
    assert command[0] == "produce-sample" and command[0] in COMMANDS
    build_parser(command[0]).parse_args(command)  # its flags are real: argparse exits on an unknown one
    assert service["restart"] == "no"
    assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert _settings_of(service).topics[0] in _settings_of(SERVICES["pipeline"]).topics
    condition = SERVICES["pipeline"]["depends_on"]["produce-sample"]["condition"]
    assert condition == "service_completed_successfully", "the pipeline subscribes once the topic exists"


def test_the_pipeline_publishes_its_metrics_port() -> None:
    port = _settings_of(SERVICES["pipeline"]).metrics_port
    assert port == Settings().metrics_port, "set METRICS_PORT only together with the published port"
    assert f"{port}:{port}" in SERVICES["pipeline"]["ports"]


def test_the_pipeline_healthcheck_asks_healthz_on_the_metrics_port_without_curl() -> None:
    test = SERVICES["pipeline"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], "python:3.11-slim has python but no curl or wget"
    urls = re.findall(r"https?://[^'\"\s)]+", " ".join(test))
    assert len(urls) == 1, test
    url = urlsplit(urls[0])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", _settings_of(SERVICES["pipeline"]).metrics_port,
                                                  "/healthz")


def test_the_pipeline_logs_json() -> None:
    assert _settings_of(SERVICES["pipeline"]).log_format == "json"


# ---- the Dockerfile, statically: the image must install the wheel, as users do ----

# What the wheel build reads: pyproject's metadata (readme = README.md), the package and the schemas that
# pipeline/contract/schemas links to (tests/integration/test_installed_wheel.py builds from the same four).
BUILD_INPUTS = {"pyproject.toml", "README.md", "pipeline", "schemas"}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for line in filter(str.strip, logical):
        keyword, _, arguments = line.strip().partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions(text):
        if keyword == "FROM":
            stages.append([])
        assert stages, "instructions before the first FROM"
        stages[-1].append((keyword, arguments))
    return stages


DOCKERFILE = (ROOT / "Dockerfile").read_text()
STAGES = _stages(DOCKERFILE)
FINAL = STAGES[-1]


def _runs(stage: list[tuple[str, str]]) -> list[str]:
    return [arguments for keyword, arguments in stage if keyword == "RUN"]


def _from_context(arguments: str) -> tuple[list[str], str] | None:
    """(sources, destination) of a COPY/ADD from the build context; None for one --from another stage."""
    words = arguments.split()
    if any(word.startswith("--from=") for word in words):
        return None
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1], paths[-1]


def _copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    return [copy for keyword, arguments in stage
            if keyword in ("COPY", "ADD") and (copy := _from_context(arguments)) is not None]


def _workdir_at(stage: list[tuple[str, str]], index: int) -> str:
    workdir = "/"
    for keyword, arguments in stage[:index]:
        if keyword == "WORKDIR":
            workdir = arguments if arguments.startswith("/") else f"{workdir.rstrip('/')}/{arguments}"
    return workdir


def _copied_to(stage: list[tuple[str, str]]) -> dict[str, str]:
    """Build-context path -> absolute path in the stage."""
    placed: dict[str, str] = {}
    for index, (keyword, arguments) in enumerate(stage):
        if keyword not in ("COPY", "ADD") or (copy := _from_context(arguments)) is None:
            continue
        sources, destination = copy
        if not destination.startswith("/"):
            destination = f"{_workdir_at(stage, index).rstrip('/')}/{destination.removeprefix('./')}"
        for source in sources:
            name = source.removeprefix("./").rstrip("/")
            into_directory = destination.endswith("/") or len(sources) > 1
            placed[name] = f"{destination.rstrip('/')}/{name}" if into_directory else destination.rstrip("/")
    return placed


def test_dockerfile_never_installs_editable() -> None:
    for stage in STAGES:
        for command in _runs(stage):
            words = command.replace(";", " ").replace("&&", " ").split()
            assert "-e" not in words and "--editable" not in words and not any(
                word.startswith("--editable=") for word in words), f"editable install: {command}"


def test_dockerfile_builds_a_wheel_and_the_final_image_installs_it() -> None:
    builds = [stage for stage in STAGES[:-1] if any("pip wheel" in run or "-m build" in run for run in _runs(stage))]
    assert builds, "a build stage must make the wheel (pip wheel / python -m build)"
    assert any("pip install" in run and ".whl" in run for run in _runs(FINAL)), "the final image installs a wheel"
    from_stages = [word.removeprefix("--from=") for keyword, arguments in FINAL if keyword == "COPY"
                   for word in arguments.split() if word.startswith("--from=")]
    stage_names = {stage[0][1].split()[-1] for stage in builds if " AS " in stage[0][1].upper()}
    assert set(from_stages) & stage_names, "the final image takes the wheel from the build stage"
    assert not _copies(FINAL), "the final image must not carry the source tree (it would shadow the wheel)"


def test_dockerfile_build_stage_copies_what_the_wheel_build_needs() -> None:
    builds = [stage for stage in STAGES[:-1] if any("pip wheel" in run or "-m build" in run for run in _runs(stage))]
    assert len(builds) == 1, "exactly one build stage makes the wheel"
    placed = _copied_to(builds[0])
    assert BUILD_INPUTS <= set(placed), f"missing from the build stage: {BUILD_INPUTS - set(placed)}"
    # pipeline/contract/schemas is a relative link: it resolves only if schemas/ sits where it does here
    link = ROOT / "pipeline" / "contract" / "schemas"
    assert link.is_symlink() and os.readlink(link) == "../../schemas"
    assert placed["schemas"] == placed["pipeline"].rsplit("/", 1)[0] + "/schemas", placed
    assert placed["pyproject.toml"].rsplit("/", 1)[0] == placed["pipeline"].rsplit("/", 1)[0], placed


def test_dockerfile_runs_the_console_script_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in FINAL if keyword == "USER"]
    assert users, "the final image must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert "--uid 10001" in " ".join(_runs(FINAL)) and user in ("10001", "pipeline")
    assert [arguments for keyword, arguments in FINAL if keyword == "ENTRYPOINT"][-1] == '["wigzo-pipeline"]'
    assert [arguments for keyword, arguments in FINAL if keyword == "CMD"][-1] == '["run"]'
