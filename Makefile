# Every target creates .venv itself, so a fresh clone needs nothing but Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

# The demo network: demo partner keys are generated under var/keys (never committed).
serve: $(STAMP)
	test -f var/keys/encryption-keys.json || GATEWAY_DEMO=true $(BIN)/gateway keys init
	$(BIN)/gateway db upgrade
	GATEWAY_DEMO=true $(BIN)/gateway serve --host 127.0.0.1 --port 8080

lint: $(STAMP)
	$(BIN)/ruff check gateway adapters tests benchmarks
	$(BIN)/ruff format --check gateway adapters tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n 2 -q

test: lint typecheck unit

bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python benchmarks/bench_rest.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_store_write.py
	$(BIN)/python benchmarks/bench_consent.py
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_oracles.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
