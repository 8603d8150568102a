# The Makefile is the interface: people, CI and hooks run the same targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
LINT_PATHS := libs services tests deploy $(wildcard bench)

.DEFAULT_GOAL := help
.PHONY: help install lint fmt test test-unit test-integration test-fast test-e2e mutation proto up down restart status logs \
        logs-feed logs-monitor logs-api logs-sim logs-alerts demo-outage demo-outage-extended demo-blackout bench login token-set \
        up-ha down-ha status-ha

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-22s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## create .venv and install the project with its dev tools
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,sim,local]'

lint: ## ruff check, ruff format --check, mypy --strict
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)
	mypy libs services deploy

fmt: ## apply ruff's fixes and formatting
	ruff check --fix $(LINT_PATHS)
	ruff format $(LINT_PATHS)

# Test order is random (pytest-randomly prints its seed); replay one with PYTEST_ARGS="-p randomly --randomly-seed=N".
PYTEST_ARGS ?=

test: ## run every test (unit, integration against a real Redis, end-to-end with real processes)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: ## only the unit tier (no Redis, no processes)
	$(PY) -m pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-integration: ## only the integration tier (a private redis-server, the simulator in-process, real sockets)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

test-fast: ## the fast tiers: unit + integration (everything but end-to-end), under 2 minutes
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: ## only the end-to-end tier (every service as a real process)
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

mutation: ## apply each deliberate bug of tests/mutation in a scratch copy; fails if the fast tiers miss one
	$(PY) -m tests.mutation

proto: ## regenerate the protobuf module from libs/common/proto/MarketDataFeedV3.proto
	cd libs/common/proto && $(PY) -m grpc_tools.protoc -I. \
	  -I"$$($(PY) -c 'import grpc_tools,os;print(os.path.join(os.path.dirname(grpc_tools.__file__),"_proto"))')" \
	  --python_out=. --pyi_out=. MarketDataFeedV3.proto

# Compose when a Docker engine answers, local supervised processes otherwise.
MODE := $(shell docker info >/dev/null 2>&1 && (docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null) && echo compose || echo local)
RUNNER := deploy/$(MODE).sh

up: ## bring the whole system up (simulator unless UPSTOX_ACCESS_TOKEN is set); Compose or local processes
	@echo "==> mode: $(MODE) ($(if $(filter compose,$(MODE)),a Docker engine answers,no Docker engine: local processes under supervisord))"
	@$(RUNNER) up

down: ## stop everything make up started
	@$(RUNNER) down

restart: ## restart every service
	@$(RUNNER) restart

status: ## each service's state and heartbeat
	@$(RUNNER) status

logs: ## follow every service's log, each line prefixed with its service
	@$(RUNNER) logs

login: ## log in through Upstox's OAuth dialog; every service uses the new access token at once
	@$(PY) -m services.api login

token-set: ## a new access token from stdin for every service, no restart: make token-set < token.txt
	@$(if $(filter compose,$(MODE)),docker compose exec -T api python -m services.api token set,$(PY) -m services.api token set)

logs-feed: ## follow the feed's log
	@$(RUNNER) logs feed

logs-monitor: ## follow the monitor's log
	@$(RUNNER) logs monitor

logs-api: ## follow the api's log
	@$(RUNNER) logs api

logs-sim: ## follow the simulator's log
	@$(RUNNER) logs sim

up-ha: ## the HA topology on this machine: Redis master + replica, 3 Sentinels (26379-26381), 2 of each service
	@deploy/ha/local.sh up

down-ha: ## stop everything make up-ha started
	@deploy/ha/local.sh down

status-ha: ## the HA topology's master and each instance's heartbeat
	@deploy/ha/local.sh status

logs-alerts: ## follow the alerts service's log
	@$(RUNNER) logs alerts

demo-outage: ## the guide's Example 1 on the simulator (brief disconnect, TP on a cached price)
	@$(PY) -m deploy.demo_outage brief

demo-outage-extended: ## the guide's Example 2 with compressed time (needs PRICE_CACHE_TTL_S small: see README)
	@$(PY) -m deploy.demo_outage extended

demo-blackout: ## Layer 0: the whole guard stopped, the price falls through a stop, the broker's GTT fires
	@$(PY) -m deploy.demo_blackout $(RUNNER)

bench: ## run the benchmarks, write bench/results/latest.json and a Markdown report
	$(PY) -m bench
