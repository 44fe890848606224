"""The health a supervised member shares with its supervisor through shared memory.

Its own module so that the member (which publishes it) and the supervisor (which reads it) both import it
without importing each other, and without loading Kafka or HTTP into the supervisor.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import Synchronized, SynchronizedString

import orjson

REASONS_BYTES = 2048


@dataclass
class MemberHealth:
    """What a member process shares with its supervisor: when its loop last polled (monotonic clocks are
    system-wide on Linux) and why it is not ready, as JSON."""

    last_poll: Synchronized[float]
    reasons: SynchronizedString

    @classmethod
    def shared(cls, context: SpawnContext, last_poll: float) -> MemberHealth:
        """Health in memory that processes started from `context` share."""
        return cls(context.Value("d", last_poll), context.Array(ctypes.c_char, REASONS_BYTES))

    def publish(self, last_poll: float, reasons: list[str]) -> None:
        self.last_poll.value = last_poll
        self.reasons.value = orjson.dumps(reasons)[: REASONS_BYTES - 1]

    def read_reasons(self) -> list[str]:
        try:
            return list(orjson.loads(self.reasons.value or b"[]"))
        except orjson.JSONDecodeError:  # cut at the buffer's end
            return ["(reasons too long to show)"]
