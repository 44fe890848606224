# The two README commands: `make demo` (the pipeline end to end on local Kafka + Wigzo sandbox)
# and `make test` (the whole suite against a real local broker). Both set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test unit kafka-start kafka-stop bench image-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/wigzo-pipeline demo

# Most of the suite waits (on Kafka, subprocesses, sandboxes), so it runs on 4 workers even on 2 cores. Each file
# stays on one worker: module fixtures (the installed wheel) are built once, and the throughput scenarios of
# test_wigzo_faults.py never compete with each other. Tests marked `serial` run afterwards, alone. --durations
# lists the slowest tests of each part.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 4 --dist loadfile --durations=15 -m "not serial"
	$(BIN)/python -m pytest --durations=15 -m serial

unit: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not integration"

kafka-start: $(VENV)/.installed
	$(BIN)/wigzo-pipeline kafka start

kafka-stop: $(VENV)/.installed
	$(BIN)/wigzo-pipeline kafka stop

bench: $(VENV)/.installed
	$(BIN)/python bench/pipeline_bench.py

# The container image built from the Dockerfile and run for real, with no Docker engine (deploy/image_test.py says
# how). Needs root; installs buildah and debootstrap with apt-get if missing; .ci/run runs it too.
image-test: $(VENV)/.installed
	$(BIN)/python deploy/image_test.py
