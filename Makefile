# The two commands of the README. Both do their own set-up (idempotent).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(BIN)/python scripts/demo.py --workdir $(DEMO_DIR)

test: setup
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build *.egg-info src/*.egg-info
