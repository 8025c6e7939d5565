# trioscale: `make run` starts everything on the embedded defaults; `make test` runs the whole suite.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test postgres clean-venv

run: $(STAMP)
	$(VENV)/bin/trioscale serve

test: postgres $(STAMP)
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

clean-venv:
	rm -rf $(VENV)
