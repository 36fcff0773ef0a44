# The two commands a newcomer needs: `make demo` and `make test`. Both create the virtualenv
# (.venv, from python3 alone) and install bulkdl with its development tools on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit soak bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/bulkdl demo

test: lint typecheck unit

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow"

# Long soak and scale runs (hundreds of kill -9 seeds, 1,000-series loads): not part of `make test`.
soak: $(BIN)/.installed
	BULKDL_SOAK_RUNS=$${BULKDL_SOAK_RUNS:-200} $(BIN)/python -m pytest -m slow

# The other tools the benchmarks compare against live in their own virtualenv.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet tcia_utils nbiatoolkit
	touch $@

bench: $(BIN)/.installed $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/run_all.py --others-python $(BENCH_VENV)/bin/python

clean:
	rm -rf $(VENV) $(BENCH_VENV) .cache .pytest_cache .mypy_cache .ruff_cache demo-output
