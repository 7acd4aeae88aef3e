# Set-up and the everyday commands. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test docs lint bench clean

$(BIN)/ppl-models: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,docs]'
	touch $@

setup: $(BIN)/ppl-models

demo: setup
	$(BIN)/ppl-models exp-normal

test: setup
	$(BIN)/python -m pytest

docs: setup
	PPL_MODELS_DOCS_MODE=$${PPL_MODELS_DOCS_MODE:-full} $(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/ppl-models bench exp-normal

clean:
	rm -rf $(VENV) docs/_build docs/jupyter_execute docs/tutorials/_generated docs/tutorials/_ipynb \
		docs/api/generated
