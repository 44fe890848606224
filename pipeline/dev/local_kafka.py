"""A real single-node Apache Kafka (KRaft) on loopback, provisioned from Maven Central.

The broker's jars are resolved once with the machine's `mvn` into a git-ignored cache; later starts
need no network. Used by the demo, the test suite and CI; deployments point KAFKA_BOOTSTRAP_SERVERS
at their own cluster instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka.admin import AdminClient

from pipeline.config import LOCAL_BOOTSTRAP
from pipeline.model import PipelineError

PORT = int(LOCAL_BOOTSTRAP.rsplit(":", 1)[1])
CONTROLLER_PORT = PORT + 1
RESOURCES = resources.files("pipeline.dev") / "resources" / "kafka"


class LocalKafkaError(PipelineError):
    """The local broker could not be provisioned, started or stopped; the message says what to do."""


def default_home() -> Path:
    """`.cache/kafka` of the source checkout, else the user's cache directory."""
    if env := os.environ.get("WIGZO_KAFKA_HOME"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "kafka"
    return Path.home() / ".cache" / "segment-wigzo" / "kafka"


@dataclass(frozen=True)
class LocalKafka:
    home: Path

    @property
    def libs(self) -> Path:
        return self.home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def bootstrap(self) -> str:
        return LOCAL_BOOTSTRAP

    def install(self) -> bool:
        """Resolve the broker's jars unless the cache already matches the pom; True if it downloaded."""
        pom = (RESOURCES / "pom.xml").read_bytes()
        marker = self.libs / ".resolved"
        digest = hashlib.sha256(pom).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError("Maven ('mvn') is not on PATH: install it (apt-get install maven) "
                                  "or point KAFKA_BOOTSTRAP_SERVERS at an existing Kafka")
        self.home.mkdir(parents=True, exist_ok=True)
        pom_path = self.home / "pom.xml"
        pom_path.write_bytes(pom)
        shutil.rmtree(self.libs, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(pom_path), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise LocalKafkaError("Maven could not resolve org.apache.kafka:kafka_2.13 from Maven Central:\n"
                                  + (result.stdout + result.stderr)[-2000:])
        marker.write_text(digest)
        return True

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise LocalKafkaError("Java 17+ is needed for the local Kafka: install a JDK or set JAVA_HOME")
        return java

    def _classpath(self) -> str:
        return str(self.libs / "*")

    def _write_config(self) -> Path:
        template = (RESOURCES / "server.properties").read_text()
        config = self.home / "server.properties"
        config.write_text(template.format(port=PORT, controller_port=CONTROLLER_PORT, data_dir=self.data_dir))
        (self.home / "log4j2.yaml").write_bytes((RESOURCES / "log4j2.yaml").read_bytes())
        return config

    def _format_storage(self, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            [self._java(), "-cp", self._classpath(), "kafka.tools.StorageTool", "format",
             "-t", str(uuid.uuid4()).replace("-", "")[:22], "-c", str(config)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise LocalKafkaError(f"formatting the KRaft storage failed:\n{result.stdout}{result.stderr}")

    def pid(self) -> int | None:
        """The broker's pid if it is running, from the pid file."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def answers(self, timeout: float = 2.0) -> bool:
        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=timeout)
        except Exception:  # any failure to reach the cluster means "not ready" here
            return False
        return True

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker unless it runs already; return the bootstrap address once it answers."""
        if self.pid() is not None and self.answers():
            return self.bootstrap
        if self.answers(timeout=1.0):
            raise LocalKafkaError(f"another Kafka already listens on {self.bootstrap} (not started from {self.home}): "
                                  "stop it, or set KAFKA_BOOTSTRAP_SERVERS to use it instead")
        self.install()
        config = self._write_config()
        self._format_storage(config)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [self._java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
                 f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                 "-cp", self._classpath(), "kafka.Kafka", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalKafkaError(f"the broker exited with code {process.returncode}; "
                                      f"last log lines:\n{self._log_tail()}")
            if self.answers(timeout=1.0):
                return self.bootstrap
            time.sleep(0.2)
        raise LocalKafkaError(f"the broker did not answer within {timeout:.0f}s; see {self.log_file}:\n"
                              + self._log_tail())

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after the timeout); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            if _reap(pid):
                break
            time.sleep(0.2)
        else:
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"


def _reap(pid: int) -> bool:
    """Collect a child we started ourselves so it does not linger as a zombie; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"),
                        help="start (provisioning on first use), stop, or report the local broker")


def main(args: argparse.Namespace) -> int:
    kafka = LocalKafka(default_home())
    if args.action == "start":
        started = time.monotonic()
        downloaded = kafka.install()
        bootstrap = kafka.start()
        print(f"Kafka is up at {bootstrap} ({time.monotonic() - started:.1f}s"
              f"{', jars downloaded' if downloaded else ', from cache'}); data in {kafka.data_dir}")
        print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        return 0
    if args.action == "stop":
        print("Kafka stopped" if kafka.stop() else "Kafka was not running")
        return 0
    pid = kafka.pid()
    if pid is not None and kafka.answers():
        print(f"running (pid {pid}) at {kafka.bootstrap}")
        return 0
    print("not running" if pid is None else f"process {pid} exists but does not answer at {kafka.bootstrap}")
    return 1
