# Set-up and everyday commands.  `make run` and `make test` work on a fresh
# Debian machine with Python 3.11; everything lands in .venv and run/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := setup.cfg pyproject.toml $(shell find msagate twisted -name '*.py')
DEMO := run
PYTHON_DIRS := msagate twisted tests $(wildcard benchmarks)

.PHONY: run test lint format slapd clean

run: $(VENV)/.installed $(DEMO)/msagate.ini
	$(BIN)/twistd --nodaemon --pidfile= msagate --config $(DEMO)/msagate.ini

test: $(VENV)/.installed-test slapd lint
	PYTHONPATH=. $(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(PYTHON_DIRS)
	$(BIN)/ruff format --check $(PYTHON_DIRS)
	$(BIN)/mypy msagate

format: $(VENV)/.installed-test
	$(BIN)/ruff format $(PYTHON_DIRS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A plain (non-editable) install: it is what puts the twistd plugin where
# twistd looks.  Twisted's plugin cache is refreshed right after.
$(VENV)/.installed: $(VENV)/bin/python $(SOURCES)
	$(BIN)/pip install --quiet .
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet '.[test]'
	touch $@

$(DEMO)/msagate.ini: | $(VENV)/.installed
	$(BIN)/python -m msagate.demo $(DEMO)

# The LDAP tests run a private slapd; install it where it is missing.
slapd:
	@if ! command -v slapd >/dev/null && ! test -x /usr/sbin/slapd; then \
	    echo 'installing OpenLDAP (slapd, ldap-utils)'; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq slapd ldap-utils >/dev/null; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
