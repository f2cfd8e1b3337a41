# erel-sync: `make setup` once (idempotent, offline once done), then `make demo` or `make test`.
SHELL := /bin/bash
# Debian's own interpreter is what users run (3.11.2 on Debian 12); a pyenv or other python3
# first on PATH would hide what they see. PY=... overrides.
PY ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BUILD := build
EXAMPLES := $(BUILD)/examples
TOOLS := $(BUILD)/tools/bin
# What the project needs from Debian, nothing more (docs: README "What make setup installs").
# rebar3 is NOT here: Debian's rebar3 package depends on common_test/observer/wx (GTK, WebKit,
# LLVM: ~90 packages, ~270 MB); its escript alone builds releases with the packages below.
# chromium + chromium-driver: the browser test of `erel-sync web` (tests/e2e/test_web.py).
APT_PACKAGES := git python3-venv rabbitmq-server erlang-base erlang-dev erlang-eunit erlang-syntax-tools erlang-tools erlang-parsetools chromium chromium-driver
# Scripts and tests find rebar3 here when it is not installed system-wide.
export PATH := $(CURDIR)/$(TOOLS):$(PATH)

.PHONY: setup system-packages rebar3 venv lint test test-unit test-integration test-e2e erlang-test examples demo demo-plan bench clean

setup: system-packages rebar3 venv

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

# rebar3: the system one if installed, else the escript out of Debian's package (downloaded
# once, unpacked into build/tools; no dependencies installed).
rebar3: system-packages
	@if ! command -v rebar3 >/dev/null; then \
	  set -e; dl=$$(mktemp -d); trap 'rm -rf "$$dl"' EXIT; \
	  echo "fetching rebar3 (the escript of Debian's package, without its GUI dependencies)"; \
	  (cd "$$dl" && { apt-get download rebar3 2>/dev/null || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && apt-get download rebar3; }; }); \
	  dpkg-deb -x "$$dl"/rebar3_*.deb "$$dl/x"; \
	  mkdir -p $(TOOLS); install -m 0755 "$$dl/x/usr/bin/rebar3" $(TOOLS)/rebar3; \
	  $(TOOLS)/rebar3 version; \
	fi

# A venv from $(PY); made again when it was made from another interpreter.
$(BIN)/python:
	$(PY) -m venv $(VENV)

# pip runs only when pyproject.toml changed since the last install (a set-up machine works
# offline); the stamp names the interpreter, so switching PY reinstalls too.
VENV_STAMP := $(VENV)/.installed-$(shell $(PY) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
$(VENV_STAMP): pyproject.toml | $(BIN)/python
	@want=$$($(PY) -c 'import sys; print(sys.version_info[:3])'); \
	 have=$$($(BIN)/python -c 'import sys; print(sys.version_info[:3])' 2>/dev/null); \
	 if [ "$$want" != "$$have" ]; then echo "recreating $(VENV) with $(PY)"; rm -rf $(VENV); $(PY) -m venv $(VENV); fi
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(VENV_STAMP)

lint: venv
	$(BIN)/ruff check erel_sync tests bench scripts
	$(BIN)/ruff format --check erel_sync tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_structure.py

# Example Erlang releases (tarballs + sha256), cached: rebuilt only when their sources change.
examples: system-packages rebar3
	bash erlang/build-examples.sh $(EXAMPLES)

erlang-test: system-packages rebar3
	cd erlang/erel && rebar3 eunit

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: venv examples
	$(BIN)/pytest -q tests/integration

test-e2e: venv examples
	$(BIN)/pytest -q tests/e2e

# The suite runs in random order (pytest-randomly; the seed is printed: `--randomly-seed=N`
# replays an order); PYTEST_ARGS adds flags.
test: setup lint erlang-test examples
	$(BIN)/pytest -q --durations=15 $(PYTEST_ARGS)

# The whole system on this machine: private RabbitMQ, publisher, three agents, real releases.
# DEMO_ARGS: more `erel-sync dev` options, e.g. DEMO_ARGS="--brokers 3 --publishers 2" (a
# 3-node RabbitMQ cluster, a publisher pair) or DEMO_ARGS=--private (no network namespaces).
demo: setup examples
	$(BIN)/erel-sync validate sample-repo
	$(BIN)/erel-sync dev --work-dir .work/dev $(DEMO_ARGS)

# The review half only (validate + plan of a pull request), no broker needed.
demo-plan: setup
	bash scripts/demo-plan.sh

bench: setup examples
	$(BIN)/python bench/load_validate.py
	$(BIN)/python bench/release_driver.py
	$(BIN)/python bench/gitops.py
	$(BIN)/python bench/status.py
	$(BIN)/python bench/brokers.py

clean:
	rm -rf $(BUILD) .work .pytest_cache .mypy_cache .ruff_cache
