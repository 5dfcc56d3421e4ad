"""Gunicorn settings for the web app: ``gunicorn app:app`` reads this file from the working
directory, so a developer's shell and the Docker image (``CMD ["gunicorn", "app:app"]``) serve
the same way. Each value can be changed through the environment variable named beside it."""

import os

# NumPy's OpenBLAS computes the out-of-distribution score of every batch between TensorFlow's
# forward passes; with threads of its own on the same cores, the two pools wait on each other:
# on a 2-core Xeon, a bf16 forward pass then the score took 59 ms against 35 + 1.4 ms apart, and
# 8 clients got 24.7 images/s, against 35.9 with OpenBLAS on one thread (docs/results.md). Set
# before the worker imports NumPy; the environment can still choose another count.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The image (scripts/serve.sh) binds a private Unix socket behind nginx (GUNICORN_BIND); started
# alone, all interfaces on PORT, as on most hosts.
bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8080')}"

# One worker by default: every worker process loads its own copy of the model (VGG16, about
# 60 MB of weights plus TensorFlow), and the /train job state lives in the worker that started
# the job, so with several workers a job's status URL may reach a worker that never heard of it.
# Raise WEB_CONCURRENCY only with /train disabled and memory to spare.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))

# Threads serve concurrent requests from the one model: the page and /health stay responsive
# while a prediction (with Grad-CAM, seconds on a small CPU) is running, and predictions that
# arrive together are answered by one batched forward pass (CHEST_CT_MAX_BATCH, 16): a thread
# per request that may wait in a batch, so as many threads as the largest batch.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))

# The worker must load TensorFlow and the model before it answers its first heartbeat, and a
# prediction with Grad-CAM on a busy small CPU takes seconds: 120 s keeps gunicorn from killing
# a worker that is merely slow.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# On SIGTERM (docker stop, a redeploy) running requests get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))

# The app is loaded in each worker after the fork, never in the master (no preload_app):
# TensorFlow's thread pools do not survive a fork.
preload_app = False

# Logs to stdout/stderr, where `docker logs` and the CI job read them.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# The workers' heartbeat files: on a disk-backed /tmp (Docker's default overlay filesystem) the
# heartbeat can block a worker; /dev/shm is memory. Only where it exists (not on macOS).
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Gunicorn 25.1+ opens a control socket under $HOME by default; this app needs none, and two
# servers on one machine (a test beside a developer's) would fight over the one path.
control_socket_disable = True
