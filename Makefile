# The Makefile is the interface: people, CI and hooks run the same targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
LINT_PATHS := libs services tests $(wildcard bench)

.DEFAULT_GOAL := help
.PHONY: help install lint fmt test test-unit test-integration test-e2e proto up down restart status logs \
        logs-feed logs-monitor logs-api logs-sim demo-outage demo-outage-extended bench

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-22s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## create .venv and install the project with its dev tools
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

lint: ## ruff check, ruff format --check, mypy --strict
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)
	mypy libs services

fmt: ## apply ruff's fixes and formatting
	ruff check --fix $(LINT_PATHS)
	ruff format $(LINT_PATHS)

test: ## run every test (unit, integration against a real Redis, end-to-end with real processes)
	$(PY) -m pytest

test-unit: ## only the fast unit tests
	$(PY) -m pytest tests/unit

proto: ## regenerate the protobuf module from libs/common/proto/MarketDataFeedV3.proto
	cd libs/common/proto && $(PY) -m grpc_tools.protoc -I. \
	  -I"$$($(PY) -c 'import grpc_tools,os;print(os.path.join(os.path.dirname(grpc_tools.__file__),"_proto"))')" \
	  --python_out=. --pyi_out=. MarketDataFeedV3.proto

up: ## bring the whole system up (simulator unless UPSTOX_ACCESS_TOKEN is set)
	@echo "not yet: see issue 7"

down: ## stop everything make up started
	@echo "not yet: see issue 7"

logs: ## follow every service's log
	@echo "not yet: see issue 7"

bench: ## run the benchmarks, write bench/results/latest.json and a Markdown report
	@echo "not yet: see issue 9"
