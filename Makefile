# Two commands on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: asyncapi run demo test test-fast lint typecheck proto bench clean

# Each step says what it does, and pip shows what it collects and installs (a
# first install downloads a few hundred MB and takes a minute or two).
$(STAMP): pyproject.toml constraints.txt
	@if test -x $(PY); then echo "==> [1/3] $(VENV) exists"; \
	 else echo "==> [1/3] creating the virtualenv $(VENV)"; python3 -m venv $(VENV); fi
	@echo "==> [2/3] upgrading pip"
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [3/3] installing the project and its dev tools, pinned by constraints.txt"
	@$(PY) -m pip install -c constraints.txt -e '.[dev]'
	@touch $(STAMP)
	@echo "==> installed; it runs again only when pyproject.toml or constraints.txt change"

## Start the embedded stack (or the configured servers) and every service; Ctrl-C stops all.
## `make run DEMO=1` also plays the demo story once everything is up.
run: $(STAMP)
	$(VENV)/bin/crm up $(if $(DEMO),--demo)

## Play the demo story against a stack started with `make run` (in another terminal).
demo: $(STAMP)
	$(VENV)/bin/crm demo

## The whole suite: lint, types, unit, integration and slow fault-injection tests.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

## Regenerate crm/ (Python code and stubs) from proto/.
proto: $(STAMP)
	$(PY) scripts/gen_proto.py

## Regenerate docs/asyncapi.yaml from the event registry.
asyncapi: $(STAMP)
	$(PY) scripts/gen_asyncapi.py

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
