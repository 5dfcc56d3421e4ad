"""The MLflow model registry: which registered version is the champion, and why."""
