# The two commands the README promises: `make run` starts the gateway, `make test` runs every test.
# Each sets up what it needs on a fresh machine: a virtualenv; for `test` also node modules, and
# tests/setup-system.sh for what the machine itself must have (chromium, nginx, a Redis on 127.0.0.1:6379:
# installed with apt-get when run as root, else named with the command that installs them).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/node

.PHONY: run test install node-deps system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DIR)/node_modules/.installed

# Before the venv and node modules, so that a machine without them stops at once with what to install.
system-deps:
	PYTHON='$(PYTHON)' VENV='$(VENV)' bash tests/setup-system.sh

run: install
	$(VENV)/bin/falgate serve

test: system-deps install node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m pip install --quiet -e '.[test,bench]'
	bash bench/run.sh

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache
