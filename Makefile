# The two README commands: `make demo` (the pipeline end to end on local Kafka + Wigzo sandbox)
# and `make test` (the whole suite against a real local broker). Both set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit kafka-start kafka-stop bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/wigzo-pipeline demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

unit: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not integration"

kafka-start: $(VENV)/.installed
	$(BIN)/wigzo-pipeline kafka start

kafka-stop: $(VENV)/.installed
	$(BIN)/wigzo-pipeline kafka stop

bench: $(VENV)/.installed
	$(BIN)/python bench/pipeline_bench.py
