# The two set-up commands are `make run` and `make test`; both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint typecheck pytest bench soak mutate schema clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The agent on a fresh copy of the bundled examples in .state/store, its state in .state/: the
# examples' scripts write their world/ and data there, never into the checkout (permission checks
# are off so a group-writable checkout, umask 002, still runs).
run: $(STAMP)
	@echo "machinery agent on a copy of examples/ (.state/store): API and dashboard on http://127.0.0.1:8347/"
	@echo "  try: $(BIN)/machinery status   $(BIN)/machinery watch   curl http://127.0.0.1:8347/api/v1/machines"
	rm -rf .state/store && mkdir -p .state && cp -R examples .state/store
	MACHINERY_CHECK_PERMISSIONS=false $(BIN)/machinery agent --store .state/store --state-dir .state --listen 127.0.0.1:8347

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench soak mutation
	$(BIN)/ruff format --check src tests bench soak mutation

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 3 --dist loadfile --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

# Load and faults for a while (python -m soak --help): process churn, broker restarts, hung
# commands, broken manifests and SIGKILL rounds; exits non-zero when a bound is exceeded.
soak: $(STAMP)
	$(BIN)/python -m soak

# Mutation testing (docs/mutation.md): mutmut over the modules in mutation/modules.toml, each
# against its own tests, one worker. Not part of `make test` (it takes up to an hour); the suite
# only checks the configuration. MODULES="core/fsm.py lang/duration.py" runs some of them.
MODULES ?=
mutate: $(STAMP)
	$(BIN)/python -m mutation $(MODULES)

schema: $(STAMP)
	$(BIN)/machinery schema > docs/machine.schema.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .mutation
