"""Operator commands: run (and its supervisor), transform, replay, reset-offsets, redrive, check, dlq."""
