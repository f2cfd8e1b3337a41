# erel-sync: `make setup` once (idempotent), then `make demo` or `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
EXAMPLES := $(BUILD)/examples
APT_PACKAGES := git python3-venv rabbitmq-server erlang-base erlang-dev erlang-eunit erlang-syntax-tools erlang-tools rebar3

.PHONY: setup system-packages venv lint test test-unit test-integration test-e2e erlang-test examples demo demo-plan bench clean

setup: system-packages venv

# Installs only what is missing, so a second run is quick and needs no network.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

venv: $(BIN)/python
	@$(BIN)/pip install -q -e '.[test]'

lint: venv
	$(BIN)/ruff check erel_sync tests bench
	$(BIN)/ruff format --check erel_sync tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Example Erlang releases (tarballs + sha256), cached: rebuilt only when their sources change.
examples: system-packages
	bash erlang/build-examples.sh $(EXAMPLES)

erlang-test: system-packages
	cd erlang/erel && rebar3 eunit

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: venv examples
	$(BIN)/pytest -q tests/integration

test-e2e: venv examples
	$(BIN)/pytest -q tests/e2e

test: setup lint erlang-test examples
	$(BIN)/pytest -q

# The whole system on this machine: private RabbitMQ, publisher, three agents, real releases.
demo: setup examples
	$(BIN)/erel-sync validate sample-repo
	$(BIN)/erel-sync dev --work-dir .work/dev

# The review half only (validate + plan of a pull request), no broker needed.
demo-plan: setup
	bash scripts/demo-plan.sh

bench: setup examples
	$(BIN)/python bench/load_validate.py
	$(BIN)/python bench/release_driver.py
	$(BIN)/python bench/gitops.py
	$(BIN)/python bench/status.py

clean:
	rm -rf $(BUILD) .work .pytest_cache .mypy_cache .ruff_cache
