# `make demo` and `make test` each create .venv if it is missing, install golabels into it, and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On x86_64 Linux with Python 3.11 these releases install from local wheels where pip is set up for it;
# elsewhere pip takes the newest releases the ranges in pyproject.toml allow.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# Test processes (pytest-xdist), one thread each (tests/conftest.py): the suite's subprocesses and
# single-image steps leave a core idle half the time, so two take about 2/3 of one's wall time.
TEST_WORKERS ?= 2

.PHONY: demo test test-quick lint install clean

$(BIN)/golabels: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PIN) || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e '.[dev,plots,tensorboard,mlflow]'
	touch $(BIN)/golabels

install: $(BIN)/golabels

demo: install
	$(BIN)/golabels demo

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The suite without the benchmark scripts' dry runs (marked slow), for a quick local pass.
test-quick: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# pyproject.toml's [tool.ruff]: pyflakes, pycodestyle, lines of at most 140 characters
lint: install
	$(BIN)/ruff check golabels_cli golabels tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
