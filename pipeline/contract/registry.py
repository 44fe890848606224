"""The schema registry, asked off the consume loop.

A Confluent-framed message whose schema id is not cached yet waits for one lookup; while the registry is
unreachable or hung, only the messages that need it wait (and their partitions' commit positions with them),
and everything else, JSON or cached ids, keeps flowing. The lookups run on a thread of their own as a circuit:
one id at a time, retried with backoff while the registry fails, so an outage costs one request per backoff
step instead of one per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue

from pipeline.model import PipelineError

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


class SchemaRegistryUnavailable(PipelineError):
    """The registry did not answer (or answered with a server error): not the message's fault, so never a dead
    letter; the lookup is retried."""


class SchemaLookups:
    """Resolves schema ids on a daemon thread: `want` an id from the loop, take the resolved ones with
    `resolved`. `resolve(schema_id)` does the asking (the decoder caches the answer) and raises
    SchemaRegistryUnavailable when the registry cannot answer."""

    def __init__(self, resolve: Callable[[int], object], registry: str, *, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._registry = registry
        self._stop = stop
        self._clock = clock
        self._asked: set[int] = set()  # the loop's own record of what it asked for and has not been told about
        self._wanted: SimpleQueue[int] = SimpleQueue()
        self._answered: SimpleQueue[int] = SimpleQueue()
        self._failing_since: float | None = None  # written by the lookup thread, read by the loop (probes)
        self._latest = ""
        self._thread: threading.Thread | None = None

    def want(self, schema_id: int) -> None:
        """Ask for an id once; asking again while it is being resolved does nothing."""
        if schema_id in self._asked:
            return
        self._asked.add(schema_id)
        self._wanted.put(schema_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="schema-registry", daemon=True)
            self._thread.start()

    def resolved(self) -> list[int]:
        """Ids answered since the last call: their messages can be decoded now."""
        answered = []
        while True:
            try:
                schema_id = self._answered.get_nowait()
            except Empty:
                return answered
            self._asked.discard(schema_id)
            answered.append(schema_id)

    def failing_for(self) -> float:
        """Seconds the registry has been failing; 0 while it answers."""
        since = self._failing_since
        return 0.0 if since is None else self._clock() - since

    def problem(self) -> str:
        """Why messages wait for the registry, for readiness; empty while it answers."""
        if self._failing_since is None:
            return ""
        return f"schema registry at {self._registry}: no answer for {self.failing_for():.0f}s ({self._latest})"

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                schema_id = self._wanted.get(timeout=0.5)
            except Empty:
                continue
            if self._ask(schema_id):
                self._answered.put(schema_id)

    def _ask(self, schema_id: int) -> bool:
        """Resolve one id, waiting an outage out with backoff; False only when stopped."""
        delay = FIRST_BACKOFF
        while True:
            try:
                self._resolve(schema_id)
            except SchemaRegistryUnavailable as exc:
                self._latest = str(exc)
                if self._failing_since is None:
                    self._failing_since = self._clock()
                    log.error("%s; the messages that need it wait (uncommitted) and the rest keep flowing; "
                              "check SCHEMA_REGISTRY_URL and the registry", exc)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self._failing_since is not None:
                log.info("schema registry at %s answers again after %.0fs", self._registry, self.failing_for())
                self._failing_since = None
            return True
