"""The package as users get it: a wheel built from the Docker build context, installed into a fresh virtual
environment outside the repository, driven only through its console script from a directory outside the
repository. A package-data or import-path mistake (like the decoder once reading `schemas/` from the source
tree) passes every in-tree test and fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS
from pipeline.kafka.dead_letter_headers import error_headers
from tests.conftest import TopicFactory
from tests.integration.conftest import SANDBOX_ORG_TOKEN, Sandbox
from tests.integration.pipeline_harness import free_port, read_all

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile copies into its build stage: the wheel is built from exactly these, at the same
# relative places, so pipeline/contract/schemas (a link to ../../schemas) resolves as it does in the image.
BUILD_INPUTS = ("pyproject.toml", "README.md", "pipeline", "schemas")
INSTALL_TIMEOUT = 600  # seconds; dependencies come from PyPI (or pip's find-links), normally ~10 s
RUN_TIMEOUT = 120

pytestmark = pytest.mark.slow  # building the wheel and its environment (once, for the module) takes ~15 s

IDENTIFY = {"type": "identify", "messageId": "wheel-m-1", "userId": "u-1", "traits": {"email": "ann@example.com"}}
PRODUCT_VIEWED = {"type": "track", "event": "Product Viewed", "messageId": "wheel-m-2", "userId": "u-1",
                  "properties": {"product_id": "40", "url": "https://my-site.com/iphone", "name": "iPhone"}}
INVALID = {"type": "track", "event": "Signed Up", "messageId": "wheel-m-3"}  # no userId nor anonymousId


@dataclass(frozen=True, slots=True)
class Installed:
    venv: Path
    wheel: Path
    workdir: Path  # an empty directory outside the repository, the cwd of every command

    @property
    def console_script(self) -> Path:
        return self.venv / "bin" / "wigzo-pipeline"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _check(command: list[str | Path], cwd: Path, timeout: float, env: dict[str, str]) -> tuple[str, str]:
    """Run to completion, require exit 0, return (stdout, stderr)."""
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert done.returncode == 0, (f"{' '.join(map(str, command))} exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done.stdout, done.stderr


def _clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment minus anything that points Python at the repository or configures the
    pipeline (the developer's shell may export some), plus `settings`."""
    pipeline_names = {option.env for option in OPTIONS}
    env = {name: value for name, value in os.environ.items()
           if name not in pipeline_names and not name.startswith(KAFKA_PASSTHROUGH_PREFIX)
           and name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    return {**env, **settings}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("installed-wheel")
    assert ROOT not in base.parents, "the install must live outside the repository"
    # Build from a copy of the build inputs, never in the shared work tree: an in-tree setuptools build
    # writes build/ and *.egg-info there, and a stale build/lib can slip files into the wheel.
    context = base / "context"
    context.mkdir()
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, context / name)
    workdir = base / "elsewhere"
    workdir.mkdir()
    env = _clean_environment()

    started = time.monotonic()
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", base / "dist", context], workdir,
           INSTALL_TIMEOUT, env)
    (wheel,) = (base / "dist").glob("segment_wigzo-*.whl")
    built = time.monotonic()
    venv = base / "venv"
    _check([sys.executable, "-m", "venv", venv], workdir, INSTALL_TIMEOUT, env)
    _check([venv / "bin" / "python", "-m", "pip", "install", wheel], workdir, INSTALL_TIMEOUT, env)
    print(f"\nwheel built in {built - started:.1f}s, venv + install in {time.monotonic() - built:.1f}s")
    yield Installed(venv, wheel, workdir)


def test_the_package_imports_from_the_venv_not_the_repository(installed: Installed) -> None:
    out, _ = _check([installed.python, "-c", "import pipeline, pipeline.contract.decoder as d; "
                     "print(pipeline.__file__); print(d.SCHEMAS_DIR); print(pipeline.__version__)"],
                    installed.workdir, 60, _clean_environment())
    module_file, schemas_dir, version = out.splitlines()
    site_packages = installed.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    assert Path(module_file) == site_packages / "pipeline" / "__init__.py"
    schemas = Path(schemas_dir)
    assert schemas == site_packages / "pipeline" / "contract" / "schemas"
    assert not schemas.is_symlink() and ROOT not in schemas.resolve().parents, \
        "the wheel must carry copies of the schemas, not a link back into the repository"
    shipped = {path.name for path in schemas.iterdir()}
    expected = {path.name for path in (ROOT / "schemas").iterdir() if path.suffix in (".avsc", ".json")}
    assert shipped == expected
    assert version == installed.wheel.name.split("-")[1], "package metadata is installed"


def test_transform_maps_segment_lines_through_the_console_script(installed: Installed) -> None:
    events = installed.workdir / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in (IDENTIFY, PRODUCT_VIEWED, INVALID)))
    out, errors = _check([installed.console_script, "transform", events.name], installed.workdir, 60,
                         _clean_environment(WIGZO_ORG_TOKEN="org-secret", WIGZO_BASE_URL="http://wigzo.invalid"))
    identify, product_view, invalid = (orjson.loads(line) for line in out.splitlines())
    assert identify == {"outcome": "deliver", "requests": [{
        "method": "POST", "url": "http://wigzo.invalid/rest/v1/learn/identify?org_token=***",
        "json": {"userId": "u-1", "email": "ann@example.com", "customer_id": "u-1", "source": "web"}}]}
    assert product_view == {"outcome": "deliver", "requests": [{
        "method": "POST", "url": "http://wigzo.invalid/rest/v1/learn/event?org_token=***",
        "json": {"eventName": "product_view", "eventCategory": "EXTERNAL", "userId": "u-1", "source": "web",
                 "eventval": {"productId": "40", "canonicalUrl": "https://my-site.com/iphone", "title": "iPhone"}}}]}
    assert invalid["outcome"] == "dead_letter" and invalid["stage"] == "validate"
    assert "org-secret" not in out + errors


def test_run_consumes_delivers_and_dead_letters(installed: Installed, kafka_bootstrap: str,
                                                make_topic: TopicFactory, sandbox: Sandbox) -> None:
    topic = make_topic(partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for event in (IDENTIFY, PRODUCT_VIEWED, INVALID):
        producer.produce(topic, key=b"u-1", value=orjson.dumps(event))
    assert producer.flush(30) == 0

    port = free_port()
    env = _clean_environment(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPICS=topic,
                             KAFKA_GROUP_ID=f"wheel-{uuid.uuid4().hex[:10]}", WIGZO_BASE_URL=sandbox.url,
                             WIGZO_ORG_TOKEN=SANDBOX_ORG_TOKEN, METRICS_PORT=str(port))
    process = subprocess.Popen([installed.console_script, "run", "--exit-when-idle", "5"], cwd=installed.workdir,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraped = ""
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while 'outcome="dead_lettered"' not in scraped and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
            try:  # the installed package serves /metrics (prometheus-client and the probes ship in the wheel)
                scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except requests.ConnectionError:
                continue
        _, log = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, log[-5000:]
    outcomes = {tuple(sorted(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(scraped) for sample in family.samples
                if sample.name == "wigzo_pipeline_outcomes_total"}
    dead_lettered = (("destination", "default"), ("outcome", "dead_lettered"), ("stage", "validate"))
    assert outcomes.get(dead_lettered) == 1.0, scraped[-3000:]

    received = sandbox.control.received()
    assert sorted((r["path"], r["body"].get("userId")) for r in received) == \
        [("/rest/v1/learn/event", "u-1"), ("/rest/v1/learn/identify", "u-1")], log
    product_view = next(r["body"] for r in received if r["path"] == "/rest/v1/learn/event")
    assert product_view["eventName"] == "product_view" and product_view["eventval"]["productId"] == "40"

    dead_letters = read_all(kafka_bootstrap, f"{topic}.dlq")
    assert [letter.value() for letter in dead_letters] == [orjson.dumps(INVALID)], log
    context = error_headers(dead_letters[0].headers())
    assert context["stage"] == "validate" and context["topic"] == topic
    assert SANDBOX_ORG_TOKEN not in log
