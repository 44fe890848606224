"""Development tooling, off the production path: the Wigzo sandbox, sample events, the local Kafka, the local schema
registry, the demo."""
