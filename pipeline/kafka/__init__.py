"""The Kafka loop: consuming, ordering, committing, dead-lettering, and building and running a pipeline."""
