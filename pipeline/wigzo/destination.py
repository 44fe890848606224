"""One Wigzo destination: a name, the chain that decides for its events and the client that delivers them.

A deployment has one destination (`default`) unless the config file names several (`[destinations.NAME]`),
each owning its topics and overriding any Wigzo-side setting. Each has its own client, so its own circuit
breaker, auth state and concurrency slots: a destination whose token is rejected or whose Wigzo is down pauses
only its own partitions. A settings reload is checked for every destination (`prepare`) before any takes it
(`reconfigure`): events read afterwards are decided by the new chain, and every request's next attempt uses the
new client settings.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pipeline.config import Settings
from pipeline.model import MappingDecision
from pipeline.wigzo.chain import Chain
from pipeline.wigzo.client import WigzoClient, check_base_url
from pipeline.wigzo.policy import DeliveryPolicy


class Destination:
    def __init__(self, name: str, settings: Settings, policy: DeliveryPolicy | None = None) -> None:
        self.name = name
        self.settings = settings
        self.chain = self.prepare(settings)
        self.client = WigzoClient(settings, destination=name, policy=policy)

    @staticmethod
    def prepare(settings: Settings) -> Chain:
        """What must hold before the settings may take effect: a usable base URL, and the chain they make
        (consent, filters, the event-name map). ConfigError when they cannot work."""
        check_base_url(settings.wigzo_base_url)
        return Chain.from_settings(settings)

    def decide(self, event: dict[str, Any]) -> MappingDecision:
        return self.chain.decide(event)

    def reconfigure(self, settings: Settings, chain: Chain, changed: Collection[str]) -> None:
        """Take a reload's settings (checked by `prepare`, which made `chain`); `changed`: the keys that did."""
        self.settings, self.chain = settings, chain
        self.client.reconfigure(settings, changed)
