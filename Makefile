# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser haproxy promtool lint test demo demo-port clean

install: $(STAMP)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Debian packages the tests drive: the console's browser tests Chromium (Playwright never
# downloads a browser here), the deploy tests compose's proxy, HAProxy, and check the alerting
# rules with promtool. A clean CI clone runs as root; elsewhere sudo is used if there is one.
CHROMIUM := /usr/bin/chromium
HAPROXY := /usr/sbin/haproxy
PROMTOOL := /usr/bin/promtool
browser: $(CHROMIUM)
haproxy: $(HAPROXY)
promtool: $(PROMTOOL)

$(CHROMIUM):
	@$(call apt_install,chromium)

$(HAPROXY):
	@$(call apt_install,haproxy)

# Debian ships promtool only in `prometheus`, whose server it enables; on a machine with
# systemd, `systemctl disable --now prometheus` stops it (the tests need promtool alone).
$(PROMTOOL):
	@$(call apt_install,prometheus)

# $(call apt_install,PACKAGE): install a Debian package for the target file it provides.
apt_install = if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "error: $@ is missing; as root: apt-get install -y $(1)" >&2; exit 1; fi; \
	set -x; $$sudo apt-get update -qq \
	&& DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $(1)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --no-color Dockerfile
	$(BIN)/shellcheck scripts/*.sh deploy/*.sh benchmarks/peers/*/*.sh

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
# REQUIRE_BROWSER, REQUIRE_HAPROXY, REQUIRE_PROMTOOL: those tests fail, not skip, if the
# program is missing after all.
test: lint browser haproxy promtool
	@REQUIRE_BROWSER=1 REQUIRE_HAPROXY=1 REQUIRE_PROMTOOL=1 $(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The port first: a taken DEMO_PORT is refused before minutes of install and training.
demo: demo-port install
	@bash scripts/demo.sh

demo-port:
	@bash scripts/demo.sh --check-port

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo
