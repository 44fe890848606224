"""A Confluent-compatible schema registry on loopback: Apicurio Registry 2.4, built from Maven Central.

The registry is built once with the machine's `mvn` into a git-ignored cache (the pom, with the three workarounds
Maven Central needs, is resources/registry/pom.xml); later starts need no network. `wigzo-pipeline registry start`
runs one on 127.0.0.1:18081 for development, the tests run their own on free ports; deployments point
SCHEMA_REGISTRY_URL at their own registry instead. Apicurio answers Confluent's API under /apis/ccompat/v7; where
it differs from Confluent's registry is written down in tests/integration/test_schema_registry.py.

Its storage is in memory: a restarted registry has forgotten every schema, where Confluent's keeps them in Kafka.
With `keep_schemas` they are kept in files beside its log instead, and survive a restart with their ids.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import requests

from pipeline.dev.jvm_process import Daemon, LocalServiceError, java, run_maven

HOST = "127.0.0.1"
PORT = 18081  # Confluent's 8081, moved up the way the local broker's 9092 is
CONFLUENT_API = "/apis/ccompat/v7"
POM = resources.files("pipeline.dev") / "resources" / "registry" / "pom.xml"
RUNNER = "local-registry-1-runner.jar"
# A development registry answers a handful of requests: the C1 compiler alone starts it in about half the time, and
# the serial collector on a small heap keeps it under about 200 MB.
JVM_OPTIONS = ("-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


class LocalRegistryError(LocalServiceError):
    """The local schema registry could not be built, started or stopped; the message says what to do."""


def default_home() -> Path:
    """`.cache/registry` of the source checkout, else the user's cache directory."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "registry"
    return Path.home() / ".cache" / "segment-wigzo" / "registry"


class RegistryBuild:
    """The registry's Quarkus app under `home/app`, built from the pom with Maven unless already built from it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.app = home / "app"

    @property
    def runner(self) -> Path:
        return self.app / RUNNER

    def install(self) -> bool:
        """Build the app unless the cache already holds the build of this pom; True if it built. Under a file lock,
        so parallel test workers and a `registry start` build it once."""
        pom = POM.read_bytes()
        digest = hashlib.sha256(pom).hexdigest()
        marker = self.app / ".built"
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if marker.exists() and marker.read_text() == digest:
                return False
            build = self.home / "build"
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            (build / "pom.xml").write_bytes(pom)
            run_maven(["-f", str(build / "pom.xml"), "package", "-DskipTests"],
                      failure="Maven could not build Apicurio Registry (io.apicurio:apicurio-registry-app) "
                              "from Maven Central",
                      alternative="point SCHEMA_REGISTRY_URL at an existing registry")
            shutil.rmtree(self.app, ignore_errors=True)
            (build / "target").rename(self.app)  # the runner jar finds its jars in lib/ beside it
            shutil.rmtree(build)
            marker.write_text(digest)
            return True


@dataclass(frozen=True)
class LocalRegistry:
    """One registry process on `port`, built under `home`. Its pid file and log go to `run_dir` (default: `home`),
    and so do its schemas when `keep_schemas` is set; otherwise they are kept in memory."""

    home: Path
    port: int = PORT
    run_dir: Path | None = None
    keep_schemas: bool = False

    @property
    def build(self) -> RegistryBuild:
        return RegistryBuild(self.home)

    @property
    def files(self) -> Path:
        """Where this registry's files go, as a stem: `.pid`, `.log`, and `.mv.db` for kept schemas."""
        return (self.run_dir or self.home) / f"registry-{self.port}"

    @property
    def daemon(self) -> Daemon:
        return Daemon("schema registry", self.files.with_suffix(".pid"), self.files.with_suffix(".log"))

    @property
    def url(self) -> str:
        """What SCHEMA_REGISTRY_URL (and confluent-kafka's SchemaRegistryClient) takes."""
        return f"http://{HOST}:{self.port}{CONFLUENT_API}"

    def pid(self) -> int | None:
        return self.daemon.pid()

    def answers(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(f"{self.url}/subjects", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 60.0) -> str:
        """Start the registry unless it runs already (building it on first use); its URL once it answers."""
        if self.pid() is not None and self.answers():
            return self.url
        if self.answers(timeout=1.0):
            raise LocalRegistryError(f"another schema registry already listens on port {self.port} (not started "
                                     f"from {self.home}): stop it, or use it through SCHEMA_REGISTRY_URL")
        self.build.install()
        self.files.parent.mkdir(parents=True, exist_ok=True)
        storage = f"jdbc:h2:file:{self.files}" if self.keep_schemas else "jdbc:h2:mem:registry"
        self.daemon.spawn([java(), *JVM_OPTIONS, f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={self.port}",
                           f"-Dquarkus.datasource.jdbc.url={storage}", "-jar", str(self.build.runner)],
                          ready=lambda: self.answers(timeout=1.0), timeout=timeout)
        return self.url

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the registry (SIGTERM, then SIGKILL after the timeout); False if it was not running."""
        return self.daemon.stop(timeout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"),
                        help="start (building it on first use), stop, or report the local schema registry")


def main(args: argparse.Namespace) -> int:
    registry = LocalRegistry(default_home())
    if args.action == "start":
        started = time.monotonic()
        built = registry.build.install()
        url = registry.start()
        print(f"Schema registry (Apicurio, in-memory storage) is up at {url} ({time.monotonic() - started:.1f}s"
              f"{', built with Maven' if built else ', from cache'}); log in {registry.daemon.log_file}")
        print(f"SCHEMA_REGISTRY_URL={url}")
        return 0
    if args.action == "stop":
        print("Schema registry stopped" if registry.stop() else "Schema registry was not running")
        return 0
    pid = registry.pid()
    if pid is not None and registry.answers():
        print(f"running (pid {pid}) at {registry.url}")
        return 0
    print("not running" if pid is None else f"process {pid} exists but does not answer at {registry.url}")
    return 1
