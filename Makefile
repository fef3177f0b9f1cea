# webrtc-sip-gateway: build, run and test.
#
#   make run     create .venv if missing, install the project, start the gateway
#   make test    install what the tests need (Debian packages, venv, test extras), lint, pytest
#   make lint | typecheck | bench | clean | distclean
#
# Works on a fresh Debian machine with Python 3.11; uses sudo for apt only when not root.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip --disable-pip-version-check
ARGS     ?=
PYTEST_ARGS ?=
ARTIFACTS ?= artifacts

# Debian packages the end-to-end tests drive: sipp, baresip, chromium.
SYSTEM_BINS := /usr/bin/sipp /usr/bin/baresip /usr/bin/chromium /usr/sbin/slapd /usr/sbin/kamailio /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so
SYSTEM_PKGS := sip-tester baresip chromium slapd ldap-utils kamailio kamailio-tls-modules
SUDO := $(shell if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then echo sudo; fi)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

# Stamps: reinstall only when pyproject.toml changes (keeps make idempotent and quiet).
STAMP_RUN  := $(VENV)/.stamp-install
STAMP_TEST := $(VENV)/.stamp-install-test

.PHONY: help run install install-test build-deps system-deps test e2e lint typecheck bench clean distclean

help:
	@echo "make run        start the gateway (ARGS='--config config/gateway.example.toml')"
	@echo "make test       install test dependencies, lint, run the whole test suite"
	@echo "make e2e        only the end-to-end tests (tests/e2e)"
	@echo "make lint       ruff + import-linter"
	@echo "make typecheck  mypy gateway sip rtc"
	@echo "make bench      media CPU benchmark (bench/media_cpu.py)"
	@echo "make clean      remove caches and artifacts (distclean also removes .venv)"

# --- environment -------------------------------------------------------------

$(PY):
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  rm -rf $(VENV); \
	  $(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv >/dev/null; \
	  $(PYTHON) -m venv $(VENV); \
	fi

$(STAMP_RUN): pyproject.toml rtc/_relay.c | $(PY) build-deps
	@echo "pip install -e ."
	@$(PIP) install -q -e .
	@touch $@

$(STAMP_TEST): pyproject.toml rtc/_relay.c | $(PY) build-deps
	@echo "pip install -e '.[test]'"
	@$(PIP) install -q -e '.[test]'
	@touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)
install-test: $(STAMP_TEST)

# rtc._relay (C, the pass-through calls' per-packet step) builds with a C compiler and
# Python's headers; without them the install goes on without it and those calls take
# the Python step (about 1.5 times the CPU).
build-deps:
	@if ! command -v cc >/dev/null 2>&1 || ! $(PYTHON) -c 'import os, sys, sysconfig; \
	    sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  echo "C compiler or Python headers missing -> apt-get install gcc python3-dev"; \
	  ($(APT_GET) update -qq && $(APT_GET) install -y -qq gcc python3-dev >/dev/null) || \
	    echo "not installed: rtc._relay will not be built (pass-through calls take the Python step)"; \
	fi

system-deps:
	@missing=""; for f in $(SYSTEM_BINS); do [ -e "$$f" ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  echo "missing:$$missing -> apt-get install $(SYSTEM_PKGS)"; \
	  $(APT_GET) update -qq; \
	  $(APT_GET) install -y -qq $(SYSTEM_PKGS) >/dev/null; \
	fi

# --- run ---------------------------------------------------------------------

run: $(STAMP_RUN)
	exec $(VENV)/bin/webrtc-gateway $(ARGS)

# --- checks ------------------------------------------------------------------

# import-linter prints a banner; show its output only when a contract is broken.
lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check gateway sip rtc tests
	@out=$$($(VENV)/bin/lint-imports --no-cache 2>&1) && rc=0 || rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "$$out"; exit $$rc; fi; \
	echo "lint-imports: $$(echo "$$out" | grep -E '^Contracts:')"

typecheck: $(STAMP_TEST)
	$(VENV)/bin/mypy gateway sip rtc

# Lint and pytest both run; the target fails if either failed.
# pytest exit code 5 ("no tests collected") counts as a failure here.
test: system-deps $(STAMP_TEST)
	@mkdir -p $(ARTIFACTS)
	@rc=0; \
	$(MAKE) --no-print-directory lint || rc=1; \
	$(PY) -m pytest -q -p no:cacheprovider --junitxml=$(ARTIFACTS)/junit.xml $(PYTEST_ARGS) tests || rc=1; \
	exit $$rc

e2e: system-deps $(STAMP_TEST)
	@mkdir -p $(ARTIFACTS)
	$(PY) -m pytest -q -p no:cacheprovider -m e2e --junitxml=$(ARTIFACTS)/junit-e2e.xml $(PYTEST_ARGS) tests/e2e

bench: $(STAMP_RUN)
	$(PY) bench/media_cpu.py --frames 1000
	$(PY) bench/media_load.py --calls 1 --seconds 5 --latency
	@if $(PY) -c "import pesq" 2>/dev/null && { command -v espeak-ng || command -v flite; } >/dev/null; then \
	  $(PY) bench/pesq_speech.py; \
	else echo "pesq_speech.py skipped: needs '$(PIP) install pesq' and espeak-ng or flite (apt-get)"; fi

# --- cleanup -----------------------------------------------------------------

clean:
	rm -rf $(ARTIFACTS) build dist .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
