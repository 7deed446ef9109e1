# One command per action, identical locally and in CI.
#   make dev    set up, start Kafka/Redis/MinIO on loopback, run API + scheduler + executor
#   make test   set up, start the infrastructure, run unit, integration and end-to-end tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-unit test-integration infra-up infra-down dev bench chaos clean

$(STAMP): sdk/pyproject.toml pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ./sdk -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check sdk services tests
	$(BIN)/ruff format --check sdk services tests
	$(BIN)/mypy

test-unit: setup
	$(BIN)/pytest tests/unit

infra-up: setup
	infra/up.sh

infra-down:
	infra/down.sh

test: setup infra-up
	$(BIN)/pytest tests

dev: setup infra-up
	$(BIN)/indexify-cli server-dev-mode

bench: setup infra-up
	$(BIN)/python tests/bench/run.py

clean: infra-down
	rm -rf $(VENV) .data .infra

MINUTES ?= 2
chaos: setup infra-up
	$(BIN)/python tests/fault/chaos.py --minutes $(MINUTES)
