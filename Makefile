# One command to set up and run the project, one to set up and test it (see README.md).
# The setup keeps its Python environment in .venv/ and reinstalls only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup run test lint clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(BIN)/kedro run

test: setup
	$(BIN)/ruff check src tests scripts app.py gunicorn.conf.py
	$(BIN)/ruff format --check src tests scripts app.py gunicorn.conf.py
	$(BIN)/pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check --fix src tests scripts app.py gunicorn.conf.py
	$(BIN)/ruff format src tests scripts app.py gunicorn.conf.py

# Removes every run output (models, reports, MLflow store); keeps the bundled sample.
clean-outputs:
	rm -rf mlflow.db mlruns data/01_raw/downloads data/01_raw/extracted data/01_raw/inference
	find data -mindepth 2 ! -path 'data/01_raw/*' ! -name .gitkeep -delete
