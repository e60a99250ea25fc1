# Set-up and checks. TORCH_SPEC defaults to the CPU build; GPU users can override it, e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup example test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

example: setup
	$(BIN)/nlc build examples/resnet18.yaml -o build/resnet18
	$(BIN)/nlc check examples/cnn_digits.yaml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff format --check nlc tests benchmarks setup.py
	$(BIN)/ruff check nlc tests benchmarks setup.py
