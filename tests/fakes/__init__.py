"""Fakes shared by more than one test module: stand-ins that take no real time and touch no network. A fake
used by one module stays in that module; it moves here when a second module needs it.

- `clock`: `SimulatedClock`.
- `pipeline_parts`: the consume loop's parts (pipeline.kafka.parts) and its consumer.
"""
