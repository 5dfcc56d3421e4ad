"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import os

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

# Telemetry tries the network at every command; this project runs offline by default.
for _variable, _value in (
    ("KEDRO_DISABLE_TELEMETRY", "1"),
    ("DO_NOT_TRACK", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
):
    os.environ.setdefault(_variable, _value)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # mlflow.yml reads MLFLOW_TRACKING_URI from the environment (a remote server such as
    # DagsHub); Kedro enables oc.env only for credentials unless a project registers it.
    "custom_resolvers": {"oc.env": oc.env},
    # conf/<env> overrides single parameters (e.g. training.epochs) without repeating the rest.
    "merge_strategy": {"parameters": "soft"},
}
