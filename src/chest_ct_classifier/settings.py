"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import os

from kedro.config import OmegaConfigLoader
from omegaconf.resolvers import oc

from chest_ct_classifier.hooks import (
    ChampionGateHook,
    LogRedactionHook,
    NodeTimingHook,
    ParameterValidationHook,
    ReleaseHook,
    RunLockHook,
    SparkHook,
)

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
    # conf/<env> overrides single parameters (e.g. training.phase2.max_epochs), not whole files.
    "merge_strategy": {"parameters": "soft"},
    # conf/<env>/spark.yml: the SparkSession of batch scoring (hooks.SparkHook)
    "config_patterns": {"spark": ["spark*", "spark*/**"]},
}

# Parameters are validated before the first node (and nodes get typed settings); after a run
# that registered a model version, the `champion` alias moves to it only if it beats the
# champion's valid macro-F1 (chest_ct_classifier.registry.champion_gate).
HOOKS = (
    LogRedactionHook(),
    ParameterValidationHook(),
    RunLockHook(),
    ChampionGateHook(),
    ReleaseHook(),
    NodeTimingHook(),
    SparkHook(),
)
