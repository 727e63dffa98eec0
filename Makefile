# Everything a fresh Debian machine needs: `make test` and `make run` install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= router.toml

.PHONY: test demo run check lint lock bench redis-server node kannel chromium clean

# The venv is installed from requirements.lock (exact versions, sha256 hashes), then the
# project itself without its dependencies: every machine runs the same code.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refresh the lock after changing pyproject.toml's dependencies, or to take new releases
# (`make lock UPGRADE=1`); then run `make test` and commit requirements.lock.
PIP_TOOLS := pip-tools==7.7.0
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet --disable-pip-version-check '$(PIP_TOOLS)'
	.lockenv/bin/pip-compile --quiet --extra test --all-build-deps --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  $(if $(UPGRADE),--upgrade) --output-file requirements.lock pyproject.toml
	rm -rf .lockenv

# redis-server from Debian's packages when it is not on PATH.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found; installing Debian package redis-server"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: redis-server is missing and apt-get is not available; install Redis >= 6.2 and put redis-server on PATH" >&2; exit 1; }; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null || { echo "error: could not install redis-server (need root or sudo); install it and retry" >&2; exit 1; }; \
	}

# The SMPP peer we did not write: npm `smpp` 0.5.1 (tests/peers), with node from Debian if missing.
NODE_STAMP := tests/peers/node_modules/.installed

node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "node/npm not found; installing Debian packages nodejs and npm"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: node and npm are missing and apt-get is not available; install Node.js >= 18" >&2; exit 1; }; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null || { echo "error: could not install nodejs and npm (need root or sudo)" >&2; exit 1; }; \
	}

$(NODE_STAMP): tests/peers/package-lock.json | node
	cd tests/peers && npm ci --silent --no-audit --no-fund
	touch $(NODE_STAMP)

# Kannel 1.4.5 from Debian's package `kannel` when bearerbox is missing: the SMPP server's
# test with Kannel in front (tests/smpp_server/test_kannel_front.py; pytest skips it
# without Kannel). Debian starts bearerbox on install unless policy-rc.d exits 101: one is
# put there for the install only (when none is there), so nothing is left running on
# Kannel's default ports.
BEARERBOX ?= /usr/sbin/bearerbox
POLICY_RC ?= /usr/sbin/policy-rc.d

kannel:
	@[ -x $(BEARERBOX) ] || { \
	  echo "Kannel not found ($(BEARERBOX)); installing Debian package kannel"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: Kannel is missing and apt-get is not available; install Kannel 1.4.5 (bearerbox, smsbox in /usr/sbin), or run pytest directly to skip its test" >&2; exit 1; }; \
	  if [ ! -e $(POLICY_RC) ]; then \
	    trap '$$SUDO rm -f $(POLICY_RC)' EXIT; \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $(POLICY_RC) >/dev/null && $$SUDO chmod 755 $(POLICY_RC) || exit 1; \
	  fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kannel >/dev/null || { echo "error: could not install kannel (need root or sudo); install it, or run pytest directly to skip its test" >&2; exit 1; }; \
	}

# Debian's Chromium when it is missing: the web console's browser tests
# (tests/console/test_console_browser.py) drive it with Playwright, which downloads no
# browser of its own; pytest skips them without it.
CHROMIUM ?= /usr/bin/chromium

chromium:
	@[ -x $(CHROMIUM) ] || { \
	  echo "Chromium not found ($(CHROMIUM)); installing Debian package chromium"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: Chromium is missing and apt-get is not available; install Chromium at $(CHROMIUM) (or set CHROMIUM=path), or run pytest directly to skip the browser tests" >&2; exit 1; }; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null || { echo "error: could not install chromium (need root or sudo); install it, or run pytest directly to skip the browser tests" >&2; exit 1; }; \
	}

test: check redis-server kannel chromium $(NODE_STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP) redis-server
	$(BIN)/sms-router demo

run: $(STAMP) redis-server
	@./config/run-local.sh $(CONFIG)

check: $(STAMP)
	$(BIN)/ruff check router binds sims tests bench
	$(BIN)/mypy

bench: $(STAMP) redis-server
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
