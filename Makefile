# The two commands the README promises: `make run` starts the gateway, `make test` runs every test.
# Each sets up what it needs (a virtualenv, node modules) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/node

.PHONY: run test install node-deps lint bench clean

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

run: install
	$(VENV)/bin/falgate serve

test: install node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m pip install --quiet -e '.[test,bench]'
	bash bench/run.sh

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache
