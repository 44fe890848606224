"""What every chaos scenario needs around the pipeline under test: the suite's scale, sandboxes, the real
`python -m pipeline.cli run` in subprocesses, producers that remember where each message landed, and a broker
of the test's own for scenarios that stop one (the shared broker at 127.0.0.1:19092 is never touched)."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import requests
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS
from pipeline.dev.local_kafka import LocalKafka, default_home
from pipeline.dev.samples import SampleMessage
from pipeline.dev.sandbox import Faults, SandboxControl, SandboxServer

ROOT = Path(__file__).resolve().parents[2]
# Known credential values: every scenario asserts that none of them appears in anything the pipeline writes.
ORG_TOKEN = "chaos-org-token-5f2c9e17"
API_TOKEN = "chaos-api-token-b81d4a60"
BROKER_MESSAGE_LIMIT = 1_048_588  # the broker's message.max.bytes, so a default topic's limit


@dataclass(frozen=True)
class Scale:
    """Short versions run in CI; CHAOS_LONG=1 runs the long ones: events x10, durations x3."""

    long: bool

    @classmethod
    def from_env(cls) -> Scale:
        return cls(os.environ.get("CHAOS_LONG") == "1")

    @property
    def name(self) -> str:
        return "long" if self.long else "short"

    def events(self, short: int, long: int | None = None) -> int:
        return (long if long is not None else short * 10) if self.long else short

    def seconds(self, short: float) -> float:
        return short * 3 if self.long else short


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free loopback ports (a local broker takes three)."""
    rng = random.Random()
    for _ in range(attempts):
        first = rng.randrange(20_000, 60_000)
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} consecutive free ports found in {attempts} attempts")


# ---- Wigzo ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wigzo:
    server: SandboxServer
    control: SandboxControl
    ca_bundle: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def another_control(self) -> SandboxControl:
        """A control client for another thread (a requests.Session is not to be shared across threads)."""
        return SandboxControl(self.url, ca_bundle=self.ca_bundle)


def start_wigzo(faults: Faults | None = None, ssl_context: ssl.SSLContext | None = None,
                ca_bundle: str | None = None, org_tokens: Sequence[str] = (ORG_TOKEN,)) -> Wigzo:
    """A sandbox of the test's own that requires the suite's tokens (`org_tokens`: several organizations)."""
    server = SandboxServer(org_token=org_tokens, api_token=API_TOKEN, faults=faults, ssl_context=ssl_context).start()
    return Wigzo(server, SandboxControl(server.url, ca_bundle=ca_bundle), ca_bundle)


# ---- pipeline processes -------------------------------------------------------------------------------------


def _inherited_environment() -> dict[str, str]:
    """This process's environment without any pipeline setting a developer's shell may hold."""
    settings = {option.env for option in OPTIONS} | {f"{option.env}_FILE" for option in OPTIONS if option.secret}
    return {name: value for name, value in os.environ.items()
            if name not in settings and name != "WIGZO_PIPELINE_CONFIG"
            and not name.startswith(KAFKA_PASSTHROUGH_PREFIX)}


class Member:
    """One `python -m pipeline.cli run` process, its output in files and its probes on its own port."""

    def __init__(self, name: str, env: dict[str, str], args: Sequence[str], logs: Path) -> None:
        self.name = name
        self.metrics_port = int(env["METRICS_PORT"])
        self.stdout_path = logs / f"{name}.stdout"
        self.stderr_path = logs / f"{name}.stderr"
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *args], cwd=ROOT, env=env,
                                            stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return (self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace"))

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (exit {self.process.poll()}) ---\n" + self.output()[-chars:]

    def signal(self, signum: int) -> None:
        if self.alive:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout:.0f}s\n{self.tail()}") from None

    def get(self, path: str) -> requests.Response | None:
        """A probe or /metrics answer, None while nothing listens."""
        try:
            return requests.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5)
        except requests.RequestException:
            return None

    def metric(self, sample: str) -> float | None:
        """A sample's value from /metrics, summed over its labels (0 if absent); None while nothing listens."""
        answer = self.get("/metrics")
        if answer is None:
            return None
        return sum(found.value for family in text_string_to_metric_families(answer.text)
                   for found in family.samples if found.name == sample)

    def metric_max(self, sample: str) -> float | None:
        """A sample's largest value over its labels; None while nothing listens or the sample is not exposed (a
        metric the running code does not have yet)."""
        answer = self.get("/metrics")
        if answer is None:
            return None
        values = [found.value for family in text_string_to_metric_families(answer.text)
                  for found in family.samples if found.name == sample]
        return max(values, default=None)

    def requests_sent(self) -> float:
        """Requests the member sent to Wigzo, whatever their answer (0 while it does not answer)."""
        return self.metric("wigzo_pipeline_http_requests_total") or 0.0

    def readyz(self) -> tuple[int, list[str]]:
        answer = self.get("/readyz")
        return (0, []) if answer is None else (answer.status_code, list(answer.json()["reasons"]))

    def peak_rss_mib(self) -> float | None:
        """The process's peak resident memory so far (VmHWM: the kernel's high-water mark, so one read at the end
        sees every peak before it), in MiB; None once it has exited."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return None if line is None else int(line.split()[1]) / 1024  # a zombie's status has no memory lines

    def log_records(self) -> list[dict[str, Any]]:
        """The member's JSON log lines so far, oldest first (a line still being written is skipped)."""
        records = []
        for raw in self.stderr_path.read_bytes().splitlines():
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


class Members:
    """Every pipeline process one test started."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._logs.mkdir(parents=True, exist_ok=True)
        self.started: list[Member] = []

    def start(self, name: str, settings: Mapping[str, str | None], *args: str) -> Member:
        """A member with the suite's tokens, JSON logs and a free metrics port unless `settings` says otherwise;
        a setting given as None is left out."""
        env = {**_inherited_environment(), "WIGZO_ORG_TOKEN": ORG_TOKEN, "WIGZO_API_TOKEN": API_TOKEN,
               "LOG_FORMAT": "json", "METRICS_PORT": str(free_port())}
        for key, value in settings.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        member = Member(name, env, args, self._logs)
        self.started.append(member)
        return member

    def kill_all(self) -> None:
        for member in self.started:
            if member.alive:
                member.process.kill()
            member.process.wait(timeout=30)

    def tails(self) -> str:
        return "\n".join(member.tail(1500) for member in self.started)

    def leaked(self, secrets: Iterable[str]) -> list[str]:
        """'member: secret' for every secret found in a member's stdout or stderr."""
        return [f"{member.name}: {secret[:6]}..." for member in self.started for secret in secrets
                if secret in member.output()]


# ---- producing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Produced:
    """A message as the broker stored it: where it landed, and its bytes."""

    partition: int
    offset: int
    value: bytes | None
    kind: str


class TrackingProducer:
    """Produces samples and remembers each one's partition and offset from the broker's acknowledgement, so
    the audit can find a message in the dead-letter topic by its coordinates even when it has no messageId."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                                   "message.max.bytes": BROKER_MESSAGE_LIMIT})
        self._lock = threading.Lock()
        self.produced: list[Produced] = []
        self.errors: list[KafkaError] = []

    def send(self, samples: Iterable[SampleMessage]) -> int:
        count = 0
        for sample in samples:
            while True:
                try:
                    self._producer.produce(self._topic, key=sample.key, value=sample.value,
                                           on_delivery=self._acknowledged(sample))
                    break
                except BufferError:
                    self._producer.poll(0.1)
            count += 1
            if count % 1000 == 0:
                self._producer.poll(0)
        self._producer.poll(0)
        return count

    def flush(self, timeout: float = 60.0) -> list[Produced]:
        assert self._producer.flush(timeout) == 0, "the producer could not deliver everything"
        assert not self.errors, self.errors[:3]
        with self._lock:
            return list(self.produced)

    def _acknowledged(self, sample: SampleMessage) -> Callable[[KafkaError | None, Message], None]:
        def done(error: KafkaError | None, message: Message) -> None:
            with self._lock:
                if error is not None:
                    self.errors.append(error)
                else:
                    self.produced.append(Produced(message.partition(), message.offset(), sample.value, sample.kind))
        return done


def produce(bootstrap: str, topic: str, samples: Iterable[SampleMessage]) -> list[Produced]:
    producer = TrackingProducer(bootstrap, topic)
    producer.send(samples)
    return producer.flush()


class Feeder(threading.Thread):
    """Produces from `samples` while the test runs, as much as `wanted(produced so far)` asks at each tick: a
    steady rate, or a backlog kept ahead of what Wigzo accepted so throughput never waits for input."""

    def __init__(self, producer: TrackingProducer, samples: Iterator[SampleMessage],
                 wanted: Callable[[int], int], tick: float = 0.1) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self._producer = producer
        self._samples = samples
        self._wanted = wanted
        self._tick = tick
        self._done = threading.Event()
        self.sent = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._done.wait(self._tick):
                batch = [sample for _, sample in zip(range(max(0, self._wanted(self.sent))), self._samples)]
                self.sent += self._producer.send(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by finish(), on the test's thread
            self.failure = exc

    def finish(self) -> list[Produced]:
        self._done.set()
        self.join(timeout=30)
        if self.failure is not None:
            raise self.failure
        return self._producer.flush()


def at_rate(per_second: float, total: int) -> Callable[[int], int]:
    """`Feeder` pacing: `per_second` messages a second from the first tick, `total` at most."""
    started: list[float] = []

    def wanted(sent: int) -> int:
        if not started:
            started.append(time.monotonic())
        return min(total, int((time.monotonic() - started[0]) * per_second)) - sent

    return wanted


def ahead_of(control: SandboxControl, backlog: int) -> Callable[[int], int]:
    """`Feeder` pacing for messages of one request each: keep about `backlog` of them produced but not yet
    accepted by the sandbox, topped up whenever half of it is done."""

    def wanted(sent: int) -> int:
        waiting = sent - control.count()
        return backlog - waiting if waiting < backlog // 2 else 0

    return wanted


# ---- a broker of the test's own ----------------------------------------------------------------------------


@contextmanager
def own_broker(home: Path) -> Iterator[LocalKafka]:
    """A second local broker (ports of its own, data in `home`) that a test may stop and restart; it reuses the
    shared broker's jars when they are there, and is stopped at the end whatever happens."""
    home.mkdir(parents=True, exist_ok=True)
    for candidate in (default_home() / "libs", ROOT / ".cache" / "kafka" / "libs"):
        if (candidate / ".resolved").exists():
            (home / "libs").symlink_to(candidate.resolve(), target_is_directory=True)
            break
    kafka = LocalKafka(home, port=free_port_run(3))
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()


def stop_member(member: Member, timeout: float = 60.0) -> int:
    """SIGTERM (drain and commit), the exit code."""
    member.signal(signal.SIGTERM)
    return member.wait(timeout)


def group_position(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]] | None:
    """The group's committed offset and the high watermark of each partition of `topic` (None while the broker
    does not answer); a partition with nothing committed counts as 0."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, p) for p in partitions]
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted]
        return [max(0, tp.offset) for tp in consumer.committed(wanted, timeout=10)], ends
    except KafkaException:
        return None
    finally:
        consumer.close()


def committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    """Whether the group has committed every partition of `topic` up to its high watermark."""
    position = group_position(bootstrap, group, topic)
    return position is not None and position[0] == position[1]


class RateMeter:
    """Accepted requests per second over the last `window` seconds, from the sandbox's count (cheap to ask
    often, unlike the full request list the audit reads once)."""

    def __init__(self, control: SandboxControl, window: float = 2.0) -> None:
        self._control = control
        self._window = window
        self._samples: list[tuple[float, int]] = []

    def rate(self) -> float:
        now = time.monotonic()
        self._samples.append((now, self._control.count()))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.pop(0)
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end - start >= self._window / 2 else 0.0
