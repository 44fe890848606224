"""A real single-node Apache Kafka (KRaft) on loopback, provisioned from Maven Central.

The broker's jars are resolved once with the machine's `mvn` into a git-ignored cache; later starts
need no network. Used by the demo, the test suite and CI; deployments point KAFKA_BOOTSTRAP_SERVERS
at their own cluster instead.

Besides PLAINTEXT (everything's default) the broker has a SASL_PLAINTEXT listener with SCRAM-SHA-256 two
ports up, so authenticated clients can be tested; its user is a development-only credential.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from pipeline.config import LOCAL_BOOTSTRAP
from pipeline.dev.jvm_process import Daemon, LocalServiceError, java, run_maven
from pipeline.model import Secret
from pipeline.telemetry.logs import with_kafka_logging

HOST = LOCAL_BOOTSTRAP.rsplit(":", 1)[0]
PORT = int(LOCAL_BOOTSTRAP.rsplit(":", 1)[1])
CONTROLLER_OFFSET, SASL_OFFSET = 1, 2  # the controller and SASL listeners take the two ports after PORT
RESOURCES = resources.files("pipeline.dev") / "resources" / "kafka"
# The SCRAM user of the SASL listener. A development-only credential: the broker listens on loopback only.
SASL_MECHANISM = "SCRAM-SHA-256"
SASL_USERNAME = "wigzo-dev"
SASL_PASSWORD = Secret("wigzo-dev-password")
SCRAM_ITERATIONS = 4096  # the minimum Kafka accepts for SCRAM-SHA-256


class LocalKafkaError(LocalServiceError):
    """The local broker could not be provisioned, started or stopped; the message says what to do."""


def default_home() -> Path:
    """`.cache/kafka` of the source checkout, else the user's cache directory."""
    if env := os.environ.get("WIGZO_KAFKA_HOME"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "kafka"
    return Path.home() / ".cache" / "segment-wigzo" / "kafka"


def default_port() -> int:
    """The PLAINTEXT port (the controller takes the next, SASL the one after). WIGZO_KAFKA_PORT, with
    WIGZO_KAFKA_HOME, lets a developer try broker changes beside the shared broker without stopping it."""
    text = os.environ.get("WIGZO_KAFKA_PORT")
    if not text:
        return PORT
    if not text.isdigit() or not 1024 <= int(text) <= 65533:
        raise LocalKafkaError(f"WIGZO_KAFKA_PORT={text!r} is invalid: give a free port from 1024 to 65533 "
                              "(the next two are used too), or unset it for the default")
    return int(text)


@dataclass(frozen=True)
class SaslListener:
    """Where and as whom a client authenticates to the local broker's SCRAM listener."""

    bootstrap: str
    mechanism: str
    username: str
    password: Secret

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for this listener (they hold the password: never log them)."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": self.mechanism, "sasl.username": self.username,
                "sasl.password": self.password.reveal()}


class BrokerFiles:
    """The broker's files under its home (jars, data, config, pid, log), provisioned from Maven Central."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.libs, self.data_dir = home / "libs", home / "data"
        self.daemon = Daemon("broker", home / "broker.pid", home / "broker.log")

    def install(self) -> bool:
        """Resolve the broker's jars unless the cache already matches the pom; True if it downloaded."""
        pom = (RESOURCES / "pom.xml").read_bytes()
        marker = self.libs / ".resolved"
        digest = hashlib.sha256(pom).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        pom_path = self.home / "pom.xml"
        pom_path.write_bytes(pom)
        shutil.rmtree(self.libs, ignore_errors=True)
        run_maven(["-f", str(pom_path), "dependency:copy-dependencies", f"-DoutputDirectory={self.libs}",
                   "-DincludeScope=runtime"],
                  failure="Maven could not resolve org.apache.kafka:kafka_2.13 from Maven Central",
                  alternative="point KAFKA_BOOTSTRAP_SERVERS at an existing Kafka")
        marker.write_text(digest)
        return True

    def classpath(self) -> str:
        return str(self.libs / "*")

    def write_config(self, port: int) -> Path:
        """The broker's configuration for listeners on `port` and the two ports after it."""
        template = (RESOURCES / "server.properties").read_text()
        config = self.home / "server.properties"
        config.write_text(template.format(port=port, controller_port=port + CONTROLLER_OFFSET,
                                          sasl_port=port + SASL_OFFSET, data_dir=self.data_dir))
        (self.home / "log4j2.yaml").write_bytes((RESOURCES / "log4j2.yaml").read_bytes())
        return config

    def format_storage(self, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            [java(), "-cp", self.classpath(), "kafka.tools.StorageTool", "format",
             "-t", str(uuid.uuid4()).replace("-", "")[:22], "-c", str(config)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise LocalKafkaError(f"formatting the KRaft storage failed:\n{result.stdout}{result.stderr}")


@dataclass(frozen=True)
class LocalKafka:
    home: Path
    port: int = field(default_factory=default_port)

    @property
    def files(self) -> BrokerFiles:
        return BrokerFiles(self.home)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def sasl(self) -> SaslListener:
        return SaslListener(f"{HOST}:{self.port + SASL_OFFSET}", SASL_MECHANISM, SASL_USERNAME, SASL_PASSWORD)

    def pid(self) -> int | None:
        """The broker's pid if it is running, from the pid file."""
        return self.files.daemon.pid()

    def answers(self, timeout: float = 2.0) -> bool:
        return _answers({"bootstrap.servers": self.bootstrap}, timeout)

    def sasl_answers(self, timeout: float = 2.0) -> bool:
        """True if the SASL listener authenticates the development user."""
        return _answers(self.sasl.client_config(), timeout)

    def ensure_sasl_user(self, timeout: float = 30.0) -> SaslListener:
        """Create or refresh the SCRAM user over PLAINTEXT, then wait until the SASL listener accepts it.

        At runtime rather than at storage-format time, so a data directory formatted before the listener
        existed gets the user too; upserting the same password again changes nothing for clients.
        """
        sasl = self.sasl
        upsert = UserScramCredentialUpsertion(
            sasl.username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, SCRAM_ITERATIONS),
            sasl.password.reveal().encode())
        admin = AdminClient(with_kafka_logging({"bootstrap.servers": self.bootstrap, "log_level": 0}))
        try:
            admin.alter_user_scram_credentials([upsert])[sasl.username].result(timeout=timeout)
        except Exception as exc:  # KafkaException or a timeout: either way the user could not be created
            raise LocalKafkaError(f"creating the SCRAM user {sasl.username!r} at {self.bootstrap} failed ({exc}); "
                                  f"is the broker running? see {self.files.daemon.log_file}") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sasl_answers():
                return sasl
            time.sleep(0.2)
        raise LocalKafkaError(
            f"the SASL listener at {sasl.bootstrap} did not accept user {sasl.username!r} within {timeout:.0f}s. "
            "A broker started before the listener was configured lacks it: restart it with "
            f"`wigzo-pipeline kafka stop && wigzo-pipeline kafka start`; otherwise see {self.files.daemon.log_file}")

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker unless it runs already; return the bootstrap address once it answers."""
        if self.pid() is not None and self.answers():
            return self.bootstrap
        if self.answers(timeout=1.0):
            raise LocalKafkaError(f"another Kafka already listens on {self.bootstrap} (not started from {self.home}): "
                                  "stop it, or set KAFKA_BOOTSTRAP_SERVERS to use it instead")
        files = self.files
        files.install()
        config = files.write_config(self.port)
        files.format_storage(config)
        files.daemon.spawn([java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
                            f"-Dlog4j2.configurationFile={self.home / 'log4j2.yaml'}",
                            "-cp", files.classpath(), "kafka.Kafka", str(config)],
                           ready=lambda: self.answers(timeout=1.0), timeout=timeout)
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after the timeout); False if it was not running."""
        return self.files.daemon.stop(timeout)


def _answers(config: dict[str, Any], timeout: float) -> bool:
    try:
        AdminClient(with_kafka_logging({**config, "log_level": 0})).list_topics(timeout=timeout)
    except Exception:  # any failure to reach the cluster means "not ready" here
        return False
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("start", "stop", "status"),
                        help="start (provisioning on first use), stop, or report the local broker")


def main(args: argparse.Namespace) -> int:
    kafka = LocalKafka(default_home())
    if args.action == "start":
        started = time.monotonic()
        downloaded = kafka.files.install()
        bootstrap = kafka.start()
        sasl = kafka.ensure_sasl_user()
        print(f"Kafka is up at {bootstrap} ({time.monotonic() - started:.1f}s"
              f"{', jars downloaded' if downloaded else ', from cache'}); data in {kafka.files.data_dir}")
        print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        print(f"SASL_PLAINTEXT with {sasl.mechanism} at {sasl.bootstrap}, user {sasl.username} "
              "(development-only password: see README, Local Kafka)")
        return 0
    if args.action == "stop":
        print("Kafka stopped" if kafka.stop() else "Kafka was not running")
        return 0
    pid = kafka.pid()
    if pid is not None and kafka.answers():
        sasl = kafka.sasl
        print(f"running (pid {pid}) at {kafka.bootstrap}")
        if kafka.sasl_answers():
            print(f"SASL_PLAINTEXT with {sasl.mechanism} at {sasl.bootstrap}, user {sasl.username}")
        else:
            print(f"SASL_PLAINTEXT at {sasl.bootstrap} does not accept user {sasl.username}: `wigzo-pipeline kafka "
                  "start` creates it; a broker started before the listener was configured needs a restart")
        return 0
    print("not running" if pid is None else f"process {pid} exists but does not answer at {kafka.bootstrap}")
    return 1
