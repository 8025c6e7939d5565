# trioscale: `make run` starts everything on the embedded defaults; `make test` runs the whole suite.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test postgres pebble clean-venv

run: $(STAMP)
	$(VENV)/bin/trioscale serve

test: postgres pebble $(STAMP)
	$(VENV)/bin/pytest

# The virtualenv is (re)built only when the packaging files change.
$(STAMP): pyproject.toml setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

# The PostgreSQL store tests run a throwaway cluster; they need Debian's server binaries.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y postgresql; \
	fi

# `tailscale cert` end to end (tests/e2e/test_dns_e2e.py) uses Debian's pebble ACME test server.
pebble:
	@if ! command -v pebble >/dev/null 2>&1; then \
		( $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y pebble ) \
		|| echo "pebble could not be installed: the tailscale cert test will be skipped"; \
	fi

clean-venv:
	rm -rf $(VENV)
