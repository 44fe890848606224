"""What the local Kafka and the local schema registry share: Java and Maven found on this machine, and a JVM run
in the background, known by its pid file and writing to its log, so `start`, `stop` and `status` work from any
process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.model import PipelineError


class LocalServiceError(PipelineError):
    """A local development service could not be provisioned, started or stopped; the message says what to do."""


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    found = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not found or not Path(found).exists():
        raise LocalServiceError("Java 17+ is needed for the local Kafka and schema registry: install a JDK "
                                "or set JAVA_HOME")
    return found


def run_maven(arguments: list[str], failure: str, alternative: str) -> None:
    """Run the machine's `mvn` in batch mode; `failure` heads the error with Maven's last output, `alternative`
    says what to do without Maven."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalServiceError(f"Maven ('mvn') is not on PATH: install it (apt-get install maven) or {alternative}")
    result = subprocess.run([mvn, "-B", "-q", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalServiceError(f"{failure}:\n" + (result.stdout + result.stderr)[-2000:])


@dataclass(frozen=True)
class Daemon:
    """A background process of ours: `name` in messages, its pid in `pid_file`, its output in `log_file`."""

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The process's pid if it is running, from the pid file."""
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def spawn(self, command: list[str], ready: Callable[[], bool], timeout: float) -> None:
        """Start `command` in a session of its own (it outlives this process) and wait until `ready`."""
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalServiceError(f"the {self.name} exited with code {process.returncode}; "
                                        f"last log lines:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise LocalServiceError(f"the {self.name} did not answer within {timeout:.0f}s; see {self.log_file}:\n"
                                + self.log_tail())

    def stop(self, timeout: float) -> bool:
        """SIGTERM, then SIGKILL after the timeout; False if it was not running."""
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

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"(no {self.name} log)"


def _reap(pid: int) -> bool:
    """Collect a child we started ourselves so it does not linger as a zombie; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
