"""What `run`, `replay`, `redrive`, the supervisor and the demo read about a running pipeline: progress, whether
it is done, and why it is not ready. The consume loop keeps it current; everyone else only reads it.
"""

from __future__ import annotations

from confluent_kafka import Consumer

from pipeline.config import DEFAULT_DESTINATION
from pipeline.kafka.assignment import Assignment
from pipeline.kafka.ledger import PartitionLedger
from pipeline.kafka.outcomes import OutcomeCounter, RunStats
from pipeline.kafka.parts import Parts
from pipeline.kafka.watch import KafkaWatch


class Status:
    def __init__(self, parts: Parts, ledger: PartitionLedger, assignment: Assignment, watch: KafkaWatch,
                 started: float, registry_patience: float) -> None:
        self._ledger = ledger
        self._registry_patience = registry_patience
        self._assignment = assignment
        self._watch = watch
        self._parts = parts
        self.outcomes = OutcomeCounter()
        self.stats = RunStats()
        self.consumer: Consumer | None = None  # set when the loop starts
        self.joined = False
        self.last_poll = started  # monotonic time the loop last polled Kafka (liveness counts from the start)

    def outstanding(self) -> int:
        """Messages read whose commit position is not reached yet."""
        return self._ledger.outstanding()

    def held(self) -> int:
        """Events held back, uncommitted and not dead-lettered: by a mapping streak, or waiting for a schema
        registry that has not answered for `registry_patience` seconds."""
        waiting = (self._ledger.awaiting_schema()
                   if self._parts.schemas.failing_for() >= self._registry_patience else 0)
        return self._ledger.streak.held + waiting

    def readiness(self) -> list[str]:
        """Why this member cannot take work now; empty when ready."""
        reasons = [] if self.joined else ["not in the consumer group yet"]
        dead_letters = self._parts.dead_letters
        for destination in self._parts.destinations:
            client = destination.client
            if not client.accepting_work():  # a destination of the config file's is named
                named = "" if destination.name == DEFAULT_DESTINATION else f" ({destination.name})"
                reasons.append(f"Wigzo{named}: {client.state}" + (f": {client.problem}" if client.problem else ""))
        if dead_letters.failure is not None:
            reasons.append(f"dead-letter topic: {dead_letters.failure}")
        if problem := self._ledger.streak.problem():
            reasons.append(problem)
        if problem := self._parts.schemas.problem():
            reasons.append(f"{problem}: {self._ledger.awaiting_schema()} messages wait for it")
        return reasons + [f"Kafka: {problem}" for problem in self._watch.problems()]

    def kafka_problems(self) -> list[str]:
        return self._watch.problems()

    def finished(self) -> bool:
        """Everything the assignment puts in scope was read, and all of it has its outcome."""
        return (self.consumer is not None and self._assignment.finished(self.consumer)
                and not self._ledger.outstanding())

    def stuck(self) -> bool:
        """Only held events are left unfinished (a mapping streak's, or those waiting for a registry that does not
        answer), and everything in scope is read (or no partition is being read), so nothing will come to end
        it: a batch run stops here (once it has lasted its quiet period) instead of waiting for ever."""
        held = self.held()
        return (self.consumer is not None and held > 0 and self._ledger.unfinished() == held
                and (self._ledger.all_paused() or self._assignment.finished(self.consumer)))
