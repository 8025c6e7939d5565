# trioscale: `make run` starts everything on the embedded defaults; `make test` runs the whole suite.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test postgres pebble clients headscale labtools idp browser kustomize image k8s clean-venv

run: $(STAMP)
	$(VENV)/bin/trioscale serve

test: postgres pebble labtools clients headscale idp browser kustomize $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
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

# Real Tailscale clients for tests/tailscaled, built from tailscale.com with `go install` at the
# versions in tests/tailscaled/versions.txt, into a cache outside the repository (reused when there);
# at the newest of them also Tailscale's own DERP server (derper) and its WebAssembly client
# (cmd/tsconnect/wasm, run under Node.js with the `ws` package as the browser's WebSocket).
CLIENTS_DIR ?= $(HOME)/.cache/trioscale/clients
TS_VERSIONS := $(shell grep -v '^\#' tests/tailscaled/versions.txt)
clients:
	@if ! command -v go >/dev/null 2>&1; then \
		echo "go not found: the tailscaled tests will be skipped"; exit 0; fi; \
	for v in $(TS_VERSIONS); do \
		d="$(CLIENTS_DIR)/v$$v"; \
		if [ -x "$$d/tailscaled" ] && [ -x "$$d/tailscale" ]; then continue; fi; \
		echo "building tailscaled and tailscale v$$v into $$d"; \
		GOTOOLCHAIN=local GOBIN="$$d" go install tailscale.com/cmd/tailscaled@v$$v tailscale.com/cmd/tailscale@v$$v || exit 1; \
	done; \
	v=$(firstword $(TS_VERSIONS)); d="$(CLIENTS_DIR)/v$$v"; \
	if [ ! -x "$$d/derper" ]; then \
		echo "building Tailscale's derper v$$v into $$d"; \
		GOTOOLCHAIN=local GOBIN="$$d" go install tailscale.com/cmd/derper@v$$v || exit 1; \
	fi; \
	if [ ! -f "$$d/tsconnect.wasm" ]; then \
		echo "building Tailscale's WebAssembly client v$$v into $$d"; \
		m=$$(mktemp -d) && cd "$$m" && printf 'module wasmclient\n\ngo 1.24\n' > go.mod && \
		GOTOOLCHAIN=local GOFLAGS=-mod=mod go get tailscale.com@v$$v && \
		GOTOOLCHAIN=local GOFLAGS=-mod=mod GOOS=js GOARCH=wasm go build -o "$$d/tsconnect.wasm" tailscale.com/cmd/tsconnect/wasm && \
		cp "$$(go env GOROOT)/lib/wasm/wasm_exec.js" "$$d/wasm_exec.js" && cd / && rm -rf "$$m" || exit 1; \
	fi; \
	if command -v npm >/dev/null 2>&1 && [ ! -d "$(CLIENTS_DIR)/npm/node_modules/ws" ]; then \
		npm install --silent --prefix "$(CLIENTS_DIR)/npm" ws@8.23.1 || exit 1; \
	fi

# Headscale, for the tests that move a tailnet from it to trioscale (`trioscale import headscale`:
# tests/cli/test_import_headscale_real.py, tests/tailscaled/test_import_headscale.py), into the
# same cache. `go install pkg@version` is refused while the proxy refuses the module's version list
# (it looks for a deprecation notice there); then the module and its dependencies are downloaded
# at that exact version (checked against the checksum database and Headscale's go.sum) and
# installed from the module cache, used as the proxy, so the binary still knows its version.
HEADSCALE_VERSION ?= 0.29.2
HEADSCALE_MODULE := github.com/juanfont/headscale
headscale:
	@if ! command -v go >/dev/null 2>&1; then \
		echo "go not found: the Headscale import tests will be skipped"; exit 0; fi; \
	d="$(CLIENTS_DIR)/headscale-$(HEADSCALE_VERSION)"; \
	if [ -x "$$d/headscale" ]; then exit 0; fi; \
	echo "building Headscale v$(HEADSCALE_VERSION) into $$d"; \
	GOTOOLCHAIN=local GOBIN="$$d" go install $(HEADSCALE_MODULE)/cmd/headscale@v$(HEADSCALE_VERSION) 2>/dev/null || { \
		m=$$(GOTOOLCHAIN=local go mod download -json $(HEADSCALE_MODULE)@v$(HEADSCALE_VERSION) \
			| sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && [ -n "$$m" ] && \
		(cd "$$m" && GOTOOLCHAIN=local go mod download) && \
		GOTOOLCHAIN=local GOPROXY="file://$$(go env GOMODCACHE)/cache/download" GOSUMDB=off GOBIN="$$d" \
			go install $(HEADSCALE_MODULE)/cmd/headscale@v$(HEADSCALE_VERSION); } \
	|| echo "Headscale v$(HEADSCALE_VERSION) could not be built: the Headscale import tests will be skipped"

# `kubectl kustomize` renders deploy/k8s's overlays in tests/deploy. The overlays need kustomize v5
# (`labels`, patches by target); Debian bookworm's kubectl (kubernetes-client 1.20) embeds
# kustomize v2, too old, so where no kubectl with kustomize v5 is found a pinned kustomize is built
# with Go into the cache (tests/deploy/k8srender.py looks for both).
KUSTOMIZE_VERSION ?= 5.5.0
KUSTOMIZE_DIR := $(HOME)/.cache/trioscale/kustomize-$(KUSTOMIZE_VERSION)
kustomize:
	@if kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v5'; then exit 0; fi; \
	if [ -x "$(KUSTOMIZE_DIR)/kustomize" ]; then exit 0; fi; \
	if ! command -v go >/dev/null 2>&1; then \
		echo "go not found and no kubectl with kustomize v5: the Kubernetes manifest tests will be skipped"; exit 0; fi; \
	echo "building kustomize v$(KUSTOMIZE_VERSION) into $(KUSTOMIZE_DIR)"; \
	GOTOOLCHAIN=local GOBIN="$(KUSTOMIZE_DIR)" go install sigs.k8s.io/kustomize/kustomize/v5@v$(KUSTOMIZE_VERSION)

# Renders every overlay and checks the objects (schemas offline, securityContext, limits, probes,
# secrets): the same tests `make test` runs, alone.
k8s: kustomize $(STAMP)
	$(VENV)/bin/pytest -q tests/deploy

# The container image (Dockerfile), where a Docker daemon answers and the base image is there or can
# be pulled; elsewhere it says why and succeeds, so `make image` never breaks a build without Docker.
IMAGE ?= trioscale:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PYTHON_IMAGE := $(shell sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
image:
	@if ! docker info >/dev/null 2>&1; then \
		echo "make image: no Docker daemon answers (docker info failed): image not built"; exit 0; fi; \
	if ! docker image inspect $(PYTHON_IMAGE) >/dev/null 2>&1 && ! docker pull $(PYTHON_IMAGE); then \
		echo "make image: base image $(PYTHON_IMAGE) is not available: image not built"; exit 0; fi; \
	docker build --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) . && echo "built $(IMAGE)"

# Inside the tailscaled tests' namespaces: nft (firewall rules that force traffic through DERP),
# ping (ICMP across the tailnet) and the OpenSSH client (under `tailscale ssh`).
labtools:
	@if ! command -v nft >/dev/null 2>&1 || ! command -v ping >/dev/null 2>&1 || ! command -v ssh >/dev/null 2>&1; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y nftables iputils-ping openssh-client; \
	fi

# The OIDC login tests' OpenID provider: npm's oidc-provider (pinned), run by Node.js, installed
# into a cache outside the repository (tests/oidcidp.py starts it).
IDP_DIR ?= $(HOME)/.cache/trioscale/idp
OIDC_PROVIDER_VERSION := 9.13.3
idp:
	@if ! command -v npm >/dev/null 2>&1; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y nodejs npm; fi
	@if [ "$$(node -p "require('$(IDP_DIR)/node_modules/oidc-provider/package.json').version" 2>/dev/null)" != "$(OIDC_PROVIDER_VERSION)" ]; then \
		mkdir -p "$(IDP_DIR)" && cd "$(IDP_DIR)" && \
		{ [ -f package.json ] || echo '{"name":"trioscale-test-idp","private":true,"type":"module"}' > package.json; } && \
		npm install --no-audit --no-fund --save-exact oidc-provider@$(OIDC_PROVIDER_VERSION); fi

# The browser tests' Chromium: Debian's package, driven by Playwright (from the test extra), which
# never downloads browsers of its own.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; fi

clean-venv:
	rm -rf $(VENV)

# $(call go_build_cached,DIR,MODULE_DIR,BINARY,WHAT): build the Go module in MODULE_DIR (pinned by its
# go.mod and go.sum) into DIR/BINARY; without Go, or if it fails, say that WHAT will be skipped.
define go_build_cached
	@if ! command -v go >/dev/null 2>&1; then \
		echo "go not found: $(4) will be skipped"; exit 0; fi; \
	mkdir -p "$(1)" && cd $(2) && \
	GOTOOLCHAIN=local go build -mod=readonly -o "$(1)/$(3)" . \
	|| echo "$(2) could not be built: $(4) will be skipped (fails in CI)"
endef

# Tailscale's Go API client (tailscale.com/client/tailscale/v2, pinned in tests/apiv2client/go.mod
# and go.sum) driving /api/v2 in tests/tailscaled/test_apiv2_client.py, built into the cache.
APICLIENT_DIR := $(HOME)/.cache/trioscale/apiv2client
.PHONY: apiclient
test: apiclient
apiclient:
	$(call go_build_cached,$(APICLIENT_DIR),tests/apiv2client,apiv2client,the API v2 client test)

# benchmarks/tspload: simulated nodes made by Tailscale's own protocol client (tailscale.com's
# control/tsp and control/ts2021, pinned in its go.mod), the benchmarks' load generator where a
# Python one would spend as much CPU as the server it measures; tests/benchmarks runs it small.
TSPLOAD_DIR := $(HOME)/.cache/trioscale/tspload
.PHONY: tspload
test: tspload
tspload:
	$(call go_build_cached,$(TSPLOAD_DIR),benchmarks/tspload,tspload,the tspload test)

# Tailscale's Terraform provider and OpenTofu, from the Go module proxy (pinned), for
# tests/cli/test_apiv2_terraform.py; the provider is installed by a dev override there. OpenTofu's
# go.mod has replace directives, so it is built inside a copy of its module rather than `go install`ed.
# When the proxy refuses the provider, its answer is kept in UNAVAILABLE and the test says so (and
# OpenTofu, useless without it, is not built).
TF_PROVIDER_VERSION ?= 0.29.2
TOFU_VERSION ?= 1.12.6
TF_PROVIDER_DIR := $(HOME)/.cache/trioscale/terraform-provider-tailscale
TOFU_DIR := $(HOME)/.cache/trioscale/tofu
.PHONY: terraform
test: terraform
terraform:
	@if ! command -v go >/dev/null 2>&1; then \
		echo "go not found: the Terraform provider test will be skipped"; exit 0; fi; \
	mkdir -p "$(TF_PROVIDER_DIR)" "$(TOFU_DIR)"; \
	if [ ! -x "$(TF_PROVIDER_DIR)/terraform-provider-tailscale" ]; then \
		GOTOOLCHAIN=local GOBIN="$(TF_PROVIDER_DIR)" go install \
			github.com/tailscale/terraform-provider-tailscale@v$(TF_PROVIDER_VERSION) 2>"$(TF_PROVIDER_DIR)/UNAVAILABLE" \
		&& rm -f "$(TF_PROVIDER_DIR)/UNAVAILABLE" \
		|| echo "terraform-provider-tailscale v$(TF_PROVIDER_VERSION) could not be built: $(TF_PROVIDER_DIR)/UNAVAILABLE"; fi; \
	if [ -x "$(TF_PROVIDER_DIR)/terraform-provider-tailscale" ] && [ ! -x "$(TOFU_DIR)/tofu" ]; then \
		m=$$(GOTOOLCHAIN=local go mod download -json github.com/opentofu/opentofu@v$(TOFU_VERSION) \
			| sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && [ -n "$$m" ] && \
		rm -rf "$(TOFU_DIR)/src" && cp -r "$$m" "$(TOFU_DIR)/src" && chmod -R u+w "$(TOFU_DIR)/src" && \
		(cd "$(TOFU_DIR)/src" && GOTOOLCHAIN=local go build -o "$(TOFU_DIR)/tofu" ./cmd/tofu) && \
		rm -rf "$(TOFU_DIR)/src" \
		|| echo "OpenTofu v$(TOFU_VERSION) could not be built: the Terraform provider test will be skipped"; fi
