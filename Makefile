# The project's commands; `make` alone lists them. The README's quickstart is `make run` then
# `make test`. Every target installs first: uv syncs .venv/ with uv.lock (the exact versions
# CI and the Docker image use) and does nothing when it is already in sync.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv from PATH, else a private copy installed from PyPI into .uv/ (pinned: the lock's format).
UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.uv/bin/uv)
PORT ?= 8080

export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2
# uv installs into this project's .venv/ and never downloads a Python of its own.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

LINTED := src tests scripts app.py gunicorn.conf.py

.DEFAULT_GOAL := help
.PHONY: help setup run test lint viz ui serve predict repro docker requirements clean-outputs

help: ## list the commands
	@echo "Usage: make <command>   (every command installs .venv/ from uv.lock first)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

.uv/bin/uv:
	@echo "uv not found on PATH: installing uv $(UV_VERSION) from PyPI into .uv/"
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --disable-pip-version-check "uv==$(UV_VERSION)"

setup: $(VENV)/.installed ## create .venv/ with the locked versions (project + dev tools)

# --compile-bytecode: the packages' .pyc files are written once here (about 20 s), not left to
# each new Python process, which cannot write them where PYTHONDONTWRITEBYTECODE is set (this
# machine's image and CI's): every kedro run, app and test subprocess would compile
# TensorFlow's and Keras' sources again, about 10 s each.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode --python $(PYTHON)
	@scripts/ensure_system_packages.sh
	@touch $@

run: setup ## run the whole pipeline (kedro run) on the bundled sample, offline
	$(BIN)/kedro run

test: setup ## lint, check the import layers, run the test suite
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 --dist loadgroup --no-loadscope-reorder

lint: setup ## fix what ruff can fix and format the code
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

viz: setup ## show the pipelines in Kedro-Viz (http://127.0.0.1:4141)
	$(BIN)/kedro viz run

ui: setup ## show the MLflow runs and registered models (http://127.0.0.1:5000)
	$(BIN)/kedro mlflow ui

serve: setup ## serve the upload page and JSON API on PORT (default 8080), as the image does
	PATH="$(CURDIR)/$(BIN):$$PATH" PORT=$(PORT) scripts/serve.sh

predict: setup ## predict every image under INPUT (a file, folder or .zip) and print a table
	@test -n "$(INPUT)" || { echo "usage: make predict INPUT=<image, folder or .zip>"; exit 2; }
	$(BIN)/chest-ct predict "$(INPUT)"

repro: setup ## reproduce the DVC pipeline (dvc repro) with the environment active
	. $(BIN)/activate && dvc repro

docker: ## build the serving image (needs a Docker engine)
	docker build -t chest-ct-classifier .

requirements: setup ## export the serving image's pinned, hashed requirements from uv.lock
	{ echo "# The serving image's requirements (Dockerfile), exported from uv.lock by"; \
	  echo "# \`make requirements\`: do not edit. tests/test_delivery.py checks it is current."; \
	  $(BIN)/uv export --frozen --only-group serving --format requirements-txt --no-emit-project \
		--no-header --quiet; } > requirements-serving.txt

clean-outputs: ## remove every run output (models, reports, MLflow store); keep the sample
	rm -rf mlflow.db mlruns data/01_raw/downloads data/01_raw/extracted data/01_raw/inference
	find data -mindepth 2 ! -path 'data/01_raw/*' ! -name .gitkeep -delete
