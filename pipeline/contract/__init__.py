"""The event contract: Kafka message bytes in, a Segment event validated against the Avro schemas out."""
