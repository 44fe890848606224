"""The container image, built and run for real with no Docker engine and no registry: `make image-test`.

Builds the project's Dockerfile, unchanged, with buildah on a stand-in for `python:3.11-slim` made from Debian's
own packages (the official image cannot be pulled without a registry), then proves the image: its version and
configuration, that it runs as uid 10001 with nothing writable outside its home but the sticky scratch
directories, `transform` on sample events, and a batch `run` inside the image that takes a seeded sample stream
from Kafka to the Wigzo sandbox (itself run from the image), every message ending in exactly one outcome. It
prints what it measured: times, outcome counts, the image size.

Prerequisites: root, and a kernel that lets root create mount and PID namespaces (buildah's chroot isolation);
buildah and debootstrap, installed with apt-get when missing; Kafka at KAFKA_BOOTSTRAP_SERVERS, or the project's
local broker (started if it is not running); on a cold cache, the Debian mirror apt already uses and the package
index pip already uses. The base image and buildah's storage are kept in .cache/image/: delete it to start over.

Exit status: 0 the image passed, 1 it failed a check, 77 this machine cannot run the test (the reason is printed).
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline import __version__
from pipeline.dev.local_kafka import LocalKafka, default_home
from pipeline.model import PipelineError

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "image"
SKIP = 77  # the automake convention for "this machine cannot run the test"

BASE_IMAGE = "docker.io/library/python:3.11-slim"  # what the Dockerfile's `FROM python:3.11-slim` resolves to
IMAGE = "localhost/segment-wigzo:image-test"
DEBIAN_SUITE = "bookworm"  # the Debian release under python:3.11-slim; its python3 is 3.11
# python-is-python3: the official image has a `python` command, which the compose healthcheck runs
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
BASE_LABEL = "org.segment-wigzo.ci-base"  # the suite and packages a cached base was made from
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle, in both bases, so mounting over it adds nothing
# sticky, world-writable scratch directories of every Debian image: writable by any user, and by nobody's files
SCRATCH = {"/tmp", "/var/tmp", "/run/lock", "/var/lock"}
IMAGE_UID = "10001"
ORG_TOKEN = "image-test-org-token"  # the sandbox's; never a substring of the topic, or logs would show it as ***
EVENTS, SEED = 2000, 7
QUIET_SECONDS = 2  # the batch run's --exit-when-idle
SANDBOX_START_SECONDS = 60
SAMPLE_EVENTS = 300  # for transform: the JSON events among the first 300 sample messages (garbage left out)
SAMPLE_SCRIPT = (
    "import sys; from pipeline.dev.samples import SampleStream; "
    f"sys.stdout.buffer.writelines(m.value + b'\\n' for m in SampleStream(seed={SEED}, avro_share=0)"
    f".messages({SAMPLE_EVENTS}) if not m.kind.startswith('garbage'))")
STOPPED = re.compile(r"stopped: read (\d+), (.*?); (\d+) left unfinished")


class CannotRunHere(Exception):
    """A prerequisite this machine lacks: the test is skipped (exit 77) with the reason, not failed."""


class ImageTestFailed(Exception):
    """The image, or a step that makes it, does not do what the test expects."""


def sh(args: Sequence[str], *, log: Path | None = None, stdin: str | None = None,
       env: dict[str, str] | None = None) -> str:
    """Run a command and return its standard output; with `log`, everything it prints goes there instead. A failure
    raises ImageTestFailed with the command's last lines."""
    if log is not None:
        with log.open("w") as sink:
            result = subprocess.run(args, check=False, stdout=sink, stderr=subprocess.STDOUT, text=True, input=stdin,
                                    env=env)
        output = log.read_text()
    else:
        result = subprocess.run(args, check=False, capture_output=True, text=True, input=stdin, env=env)
        output = result.stdout + result.stderr
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        where = f" (whole output: {log})" if log is not None else ""
        raise ImageTestFailed(f"`{' '.join(args)}` exited {result.returncode}{where}:\n{tail}")
    return "" if log is not None else result.stdout


# ---- the machine ----

def prerequisites() -> str:
    """Root, namespaces, buildah and debootstrap (installed when missing): what the rest needs, or CannotRunHere."""
    if os.geteuid() != 0:
        raise CannotRunHere("needs root: buildah builds and runs the image as root here (see deploy/image_test.py)")
    namespaces = ["unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "true"]
    if shutil.which("unshare") is None or subprocess.run(namespaces, check=False, capture_output=True).returncode:
        raise CannotRunHere("cannot create mount and PID namespaces, which buildah's chroot isolation needs")
    CACHE.mkdir(parents=True, exist_ok=True)
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    installed = ""
    if missing:
        if shutil.which("apt-get") is None:
            raise CannotRunHere(f"{' and '.join(missing)} missing, and no apt-get to install them")
        apt = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            sh(apt, log=CACHE / "apt.log", env=environ)
        except ImageTestFailed:  # a fresh machine may not have fetched the package lists yet
            sh(["apt-get", "update"], log=CACHE / "apt-update.log", env=environ)
            sh(apt, log=CACHE / "apt.log", env=environ)
        installed = f" ({' and '.join(missing)} installed with apt-get)"
    buildah = sh(["buildah", "--version"]).split()[2]
    debootstrap = sh(["debootstrap", "--version"]).split()[-1]
    return f"root, buildah {buildah}, debootstrap {debootstrap}{installed}"


def debian_mirror() -> str:
    """The Debian archive apt already uses for the suite, so that no mirror is named here."""
    if shutil.which("apt-get") is None:
        raise CannotRunHere(f"no apt to tell which Debian mirror to build the {DEBIAN_SUITE} base from")
    query = ["apt-get", "indextargets", "--format", "$(SITE)", "Identifier: Packages", f"Release: {DEBIAN_SUITE}",
             "Origin: Debian"]
    sites = sh(query).split()
    if not sites:  # the package lists were never fetched on this machine
        sh(["apt-get", "update"], log=CACHE / "apt-update.log")
        sites = sh(query).split()
    if not sites:
        raise CannotRunHere(f"apt has no Debian {DEBIAN_SUITE} source to build the base image from")
    return sites[0]


class Buildah:
    """buildah on the project's own storage in .cache/image (vfs: plain directories, no kernel overlay needed)."""

    def __init__(self, home: Path) -> None:
        self.prefix = ["buildah", "--root", str(home / "storage"), "--runroot", str(home / "run"),
                       "--storage-driver", "vfs"]

    def __call__(self, *args: str, log: Path | None = None) -> str:
        return sh([*self.prefix, *args], log=log)

    def image(self, name: str) -> dict | None:
        """The image's configuration, or None when the storage has no image of that name (a buildah that fails
        raises: it must not pass for a missing image)."""
        if name not in self("images", "--format", "{{.Name}}:{{.Tag}}").split():
            return None
        return json.loads(self("inspect", "--type", "image", name))["OCIv1"]["config"]

    def size(self, name: str) -> str:
        return self("images", "--format", "{{.Size}}", name).strip()

    def run_args(self, container: str, command: Sequence[str], env: dict[str, str]) -> list[str]:
        """`buildah run` as a container runtime would run the image: its USER, WORKDIR and environment, on the
        host's network. buildah ignores ENTRYPOINT, so the command names wigzo-pipeline itself."""
        variables = [f"--env={name}={value}" for name, value in env.items()]
        return [*self.prefix, "run", "--isolation", "chroot", "--network", "host", *variables, container, "--",
                *command]


# ---- the base ----

def ensure_base(buildah: Buildah) -> str:
    """A stand-in for python:3.11-slim under the name the Dockerfile asks for: Debian's Python 3.11 with pip,
    which installs into /usr/local as root's pip does in the official image. Made once and kept."""
    made_from = f"{DEBIAN_SUITE}: {' '.join(BASE_PACKAGES)}"
    config = buildah.image(BASE_IMAGE)
    if config is not None and config.get("Labels", {}).get(BASE_LABEL) == made_from:
        return f"cached, Debian {made_from}, {buildah.size(BASE_IMAGE)}"
    mirror = debian_mirror()
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    sh(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(rootfs),
        mirror], log=CACHE / "debootstrap.log")
    _slim(rootfs)
    container = buildah("from", "scratch").strip()
    try:
        mount = buildah("mount", container).strip()
        sh(["cp", "-a", f"{rootfs}/.", mount])
        buildah("umount", container)
        buildah("config", "--env", BASE_PATH, "--env", "LANG=C.UTF-8", "--cmd", "python3", "--label",
                f"{BASE_LABEL}={made_from}", container)
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container)
    shutil.rmtree(rootfs)
    buildah("rmi", "--prune")  # a base made from other packages, now untagged
    return f"made with debootstrap from {mirror}, Debian {made_from}, {buildah.size(BASE_IMAGE)}"


def _slim(rootfs: Path) -> None:
    """What the official slim images leave out: apt's caches and lists, manuals, translations and documentation
    (but not copyright notices); and Debian's EXTERNALLY-MANAGED marker, so that root's pip installs into
    /usr/local as in the official image."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
                    "usr/lib/python3.*/EXTERNALLY-MANAGED"):
        for path in list(rootfs.glob(pattern)):
            _remove(path)
    for path in list((rootfs / "usr/share/doc").glob("*/*")):
        if path.name != "copyright":
            _remove(path)


def _remove(path: Path) -> None:
    """A file, link or directory; one already gone (reached before through a linked directory) is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


# ---- the build ----

@contextmanager
def pip_settings() -> Iterator[list[str]]:
    """Volumes that give the build's pip this machine's pip settings and CA bundle, read-only, so that it reaches
    the package index as pip here does. Both are mounted over paths both bases have (root's home, Debian's CA
    bundle): a mount point buildah had to create would stay in the image as an empty file."""
    config, bundle = pip_config_from(sh([sys.executable, "-m", "pip", "config", "list"]))
    if not Path(bundle).is_file():
        raise CannotRunHere(f"no CA bundle at {bundle} to give the build's pip")
    home = Path(tempfile.mkdtemp(prefix="build-home-", dir=CACHE))  # 0700: the settings may hold an index password
    try:
        (home / ".config" / "pip").mkdir(parents=True)
        with (home / ".config" / "pip" / "pip.conf").open("w") as file:
            config.write(file)
        yield ["--volume", f"{home}:/root:ro", "--volume", f"{bundle}:{CA_BUNDLE}:ro"]
    finally:
        shutil.rmtree(home)


def pip_config_from(listed: str) -> tuple[configparser.ConfigParser, str]:
    """This machine's effective pip settings, as `pip config list` prints them (its files, then its PIP_*
    variables, which win in every section), as one pip.conf for the build, and the CA bundle they name; local
    --find-links directories are dropped (the build cannot see them)."""
    config = configparser.ConfigParser(interpolation=None)
    config.add_section("global")
    from_environment: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, quoted = line.partition("=")
        section, _, name = key.partition(".")
        if section == ":env:":
            from_environment[name] = ast.literal_eval(quoted)
            continue
        if not config.has_section(section):
            config.add_section(section)
        config[section][name] = ast.literal_eval(quoted)
    for section in config.sections():
        config[section].update(from_environment)
    bundle = config["global"].get("cert", CA_BUNDLE)
    for section in config.sections():
        if "cert" in config[section]:
            config[section]["cert"] = CA_BUNDLE
        if "find-links" in config[section]:
            remote = [link for link in config[section]["find-links"].split() if "://" in link]
            config[section]["find-links"] = " ".join(remote)
            if not remote:
                config.remove_option(section, "find-links")
    return config, bundle


def build_image(buildah: Buildah) -> str:
    with pip_settings() as volumes:
        buildah("build", "--pull=never", "--isolation", "chroot", "--network", "host", *volumes, "--tag", IMAGE,
                "--file", str(ROOT / "Dockerfile"), str(ROOT), log=CACHE / "build.log")
    buildah("rmi", "--prune")  # the image this tag named before
    return f"{IMAGE}, {buildah.size(IMAGE)} (base {buildah.size(BASE_IMAGE)}); build log {CACHE / 'build.log'}"


# ---- the proofs, inside the image ----

class Container:
    """A working container of the image: the commands of the proofs run in it, as the image's user."""

    def __init__(self, buildah: Buildah, name: str) -> None:
        self.buildah, self.name = buildah, name

    def run(self, *command: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        return sh(self.buildah.run_args(self.name, command, env or {}), stdin=stdin)

    def attempt(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command whose exit status and error output the caller judges."""
        return subprocess.run(self.buildah.run_args(self.name, command, env or {}), check=False,
                              capture_output=True, text=True)

    def start(self, *command: str, env: dict[str, str], stderr: Path) -> subprocess.Popen[str]:
        with stderr.open("w") as sink:
            return subprocess.Popen(self.buildah.run_args(self.name, command, env), stdout=subprocess.PIPE,
                                    stderr=sink, text=True)


@contextmanager
def working_container(buildah: Buildah) -> Iterator[Container]:
    name = buildah("from", "--pull=never", IMAGE).strip()
    try:
        yield Container(buildah, name)
    finally:
        buildah("rm", name)


def prove_configuration(buildah: Buildah) -> str:
    config = buildah.image(IMAGE) or {}
    seen = (config.get("User"), config.get("Entrypoint"), config.get("Cmd"))
    if seen != (IMAGE_UID, ["wigzo-pipeline"], ["run"]):
        raise ImageTestFailed(f"USER, ENTRYPOINT, CMD are {seen}, not ({IMAGE_UID}, ['wigzo-pipeline'], ['run'])")
    return f"USER {seen[0]}, ENTRYPOINT {seen[1]}, CMD {seen[2]}, WORKDIR {config.get('WorkingDir')}"


def prove_version(container: Container) -> str:
    version = container.run("wigzo-pipeline", "--version").strip()
    python = container.run("python", "--version").strip()
    if version != f"wigzo-pipeline {__version__}":
        raise ImageTestFailed(f"the image says {version!r}; this checkout is {__version__}")
    return f"{version} on {python}"


def prove_user(container: Container) -> str:
    """The image's user is uid 10001 and can write nothing outside its home but the sticky scratch directories
    (its installed code included). /proc, /sys and /dev are the runtime's mounts, not the image's."""
    identity = container.run("id").strip()
    if not identity.startswith(f"uid={IMAGE_UID}("):
        raise ImageTestFailed(f"the image runs as {identity}, not uid {IMAGE_UID}")
    home = container.run("sh", "-c", "echo ~").strip()
    # find exits non-zero over the directories it may not read, which is the point: the paths it prints count
    found = container.attempt("find", "/", "(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/dev", ")",
                              "-prune", "-o", "-writable", "-print")
    writable = found.stdout.split()
    if home not in writable:
        raise ImageTestFailed(f"find did not see the user's own home {home} as writable:\n{found.stderr[-2000:]}")
    outside = sorted(path for path in writable if path != home and not path.startswith(home + "/"))
    if set(outside) - SCRATCH:
        raise ImageTestFailed(f"uid {IMAGE_UID} can write outside {home}: {' '.join(sorted(set(outside) - SCRATCH))}")
    return f"{identity}; writable outside {home}: only {' '.join(outside)} (sticky scratch)"


def prove_transform(container: Container) -> str:
    events = container.run("python", "-c", SAMPLE_SCRIPT)
    answers = [json.loads(line) for line in container.run("wigzo-pipeline", "transform", stdin=events).splitlines()]
    outcomes = Counter(answer["outcome"] for answer in answers)
    if len(answers) != len(events.splitlines()) or set(outcomes) != {"deliver", "skip", "dead_letter"}:
        raise ImageTestFailed(f"transform answered {len(answers)} lines {dict(outcomes)} for "
                              f"{len(events.splitlines())} sample events")
    return f"{len(answers)} sample events -> " + ", ".join(f"{name} {count}" for name, count in outcomes.items())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def sandbox(container: Container) -> Iterator[str]:
    """The Wigzo sandbox, run from the image as docker-compose.yml's `sandbox` service runs it; yields its URL."""
    process = container.start("wigzo-pipeline", "sandbox", "--port", str(_free_port()),
                              env={"WIGZO_ORG_TOKEN": ORG_TOKEN}, stderr=CACHE / "sandbox.log")
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()  # printed once it listens; nothing if it died
        if not url.startswith("http://"):
            process.wait(timeout=SANDBOX_START_SECONDS)
            raise ImageTestFailed(f"the sandbox did not start ({CACHE / 'sandbox.log'}):\n"
                                  f"{(CACHE / 'sandbox.log').read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()  # buildah passes the signal on; the sandbox stops on SIGTERM
        process.wait(timeout=30)


def _sandbox_answer(url: str, route: str) -> dict:
    with urllib.request.urlopen(f"{url}/_sandbox/{route}", timeout=10) as answer:
        return json.loads(answer.read())


def prove_batch_run(container: Container, bootstrap: str) -> str:
    """produce-sample, run --exit-when-idle and dlq summary, all from the image: every message read ends in one
    outcome, the dead letters are in the dead-letter topic, the deliveries reached the sandbox."""
    topic = f"image-test-{uuid.uuid4().hex[:8]}"  # its own topic and group: nobody else's work is touched
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "KAFKA_TOPICS": topic}
    produced = container.run("wigzo-pipeline", "produce-sample", "--events", str(EVENTS), "--seed", str(SEED),
                             env=kafka)
    count = re.search(r"Produced (\d+) sample messages", produced)
    if count is None or int(count[1]) != EVENTS:
        raise ImageTestFailed(f"produce-sample did not produce {EVENTS} messages:\n{produced}")
    with sandbox(container) as url:
        began = time.monotonic()
        run = container.attempt("wigzo-pipeline", "run", "--exit-when-idle", str(QUIET_SECONDS), env={
            **kafka, "KAFKA_GROUP_ID": topic, "WIGZO_BASE_URL": url, "WIGZO_ORG_TOKEN": ORG_TOKEN,
            "METRICS_PORT": "0", "LOG_FORMAT": "json"})
        took = time.monotonic() - began
        accepted = _sandbox_answer(url, "count")["count"]
        duplicates = len(_sandbox_answer(url, "duplicates")["duplicates"])
    logs = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    stops = [match for record in logs if (match := STOPPED.match(record.get("msg", "")))]
    if run.returncode != 0 or len(stops) != 1:
        raise ImageTestFailed(f"the batch run exited {run.returncode}:\n{run.stderr[-3000:]}")
    read, unfinished = int(stops[0][1]), int(stops[0][3])
    outcomes = {name: int(number) for name, number in (part.rsplit(" ", 1) for part in stops[0][2].split(", "))}
    if read != EVENTS or sum(outcomes.values()) != read or unfinished:
        raise ImageTestFailed(f"read {read} of {EVENTS}, outcomes {outcomes}, {unfinished} unfinished")
    summary = container.run("wigzo-pipeline", "dlq", "summary", env=kafka)
    letters = re.search(r"(\d+) letter\(s\)", summary)
    if letters is None or int(letters[1]) != outcomes.get("dead_lettered", 0):
        raise ImageTestFailed(f"{outcomes.get('dead_lettered', 0)} dead-lettered, but dlq summary says:\n{summary}")
    if outcomes.get("delivered", 0) and not accepted:
        raise ImageTestFailed("events were delivered, but the sandbox accepted no request")
    return (f"topic {topic}: produced {EVENTS}, read {read}, "
            + ", ".join(f"{name} {number}" for name, number in outcomes.items())
            + f" (sum {sum(outcomes.values())}), {unfinished} unfinished, exit 0 after {took:.1f}s; "
            f"{topic}.dlq holds {letters[1]}; the sandbox accepted {accepted} requests "
            f"({duplicates} idempotency keys more than once)")


def kafka_bootstrap() -> str:
    """KAFKA_BOOTSTRAP_SERVERS, or the project's local broker, started unless it runs already."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or LocalKafka(default_home()).start()


# ---- the run ----

def step(label: str, action: Callable[[], str]) -> None:
    began = time.monotonic()
    summary = action()
    print(f"image-test: {label}: {summary} [{time.monotonic() - began:.1f}s]", flush=True)


def main() -> int:
    began = time.monotonic()
    buildah = Buildah(CACHE)
    try:
        step("prerequisites", prerequisites)
        step("base python:3.11-slim", lambda: ensure_base(buildah))
        step("image built from the Dockerfile, unchanged", lambda: build_image(buildah))
        step("configuration", lambda: prove_configuration(buildah))
        with working_container(buildah) as container:
            step("version", lambda: prove_version(container))
            step("user", lambda: prove_user(container))
            step("transform", lambda: prove_transform(container))
            bootstrap = kafka_bootstrap()
            step(f"batch run against Kafka at {bootstrap} and the sandbox",
                 lambda: prove_batch_run(container, bootstrap))
    except CannotRunHere as reason:
        print(f"image-test: skipped, this machine cannot run it: {reason}", flush=True)
        return SKIP
    except (ImageTestFailed, PipelineError) as failure:
        print(f"image-test: FAILED after {time.monotonic() - began:.1f}s: {failure}\n(logs in {CACHE}; a cache made "
              "with other buildah packages installed may need deleting: the next run starts from nothing)",
              file=sys.stderr, flush=True)
        return 1
    print(f"image-test: passed in {time.monotonic() - began:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
