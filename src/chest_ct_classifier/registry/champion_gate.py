"""The champion gate of the MLflow model registry.

Every training run registers a new version of the registered model ``chest-ct-classifier``.
The alias ``champion`` (what serving loads, ``models:/chest-ct-classifier@champion``) moves to
that version only when its run's validation macro-F1 is strictly greater than the current
champion's. The decision and both numbers are written on the new version, as tags
``champion_gate.*`` and a line of its description, so the registry UI says why each version is
or is not the champion.

Decisions (tag ``champion_gate.decision``), with their reason (``champion_gate.reason``):

- ``promoted`` / ``no_champion``: no version holds the alias (the first version ever);
- ``promoted`` / ``champion_version_missing``: the alias names a version that no longer exists;
- ``promoted`` / ``champion_without_metric``: the champion's run has no such metric to compare;
- ``promoted`` / ``better``: candidate > champion;
- ``kept_champion`` / ``not_better``: candidate <= champion (a tie keeps the incumbent);
- ``no_metric`` / ``candidate_without_metric``: the candidate's run lacks the metric; such a
  version is never promoted, even when there is no champion;
- ``already_champion``: the candidate already holds the alias; nothing moves.

A metric that is NaN or infinite counts as missing. Metrics are read from the run that
registered each version (``ModelVersion.run_id``), as ``MlflowClient.get_run(...).data.metrics``
(the last logged value of each key).
"""

from __future__ import annotations

import logging
import math
from typing import TypedDict

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

logger = logging.getLogger(__name__)

MODEL_NAME = "chest-ct-classifier"
"""The registered model every training run adds a version to (``registered_model_name``)."""
GATE_METRIC = "valid_macro_f1"
"""The run metric compared (logged by the evaluation pipeline's ``mlflow_metrics``)."""
CHAMPION_ALIAS = "champion"
"""The alias that names the best version so far, the one to serve."""
TAG_PREFIX = "champion_gate."
"""Prefix of the version tags the gate writes."""

_MISSING = "none"  # tag value for a number or version that does not exist


class GateResult(TypedDict):
    """What the gate decided for one candidate version (also written as version tags)."""

    model_name: str
    version: str
    alias: str
    metric: str
    decision: str  # promoted | kept_champion | no_metric | already_champion
    reason: str
    promoted: bool  # whether this call moved the alias to the candidate
    candidate_value: float | None
    champion_version: str | None  # the champion before the gate ran
    champion_value: float | None


def versions_registered_by_run(
    client: MlflowClient, model_name: str, run_id: str
) -> list[ModelVersion]:
    """The versions of ``model_name`` whose source run is ``run_id``, oldest first.

    A run usually registers one version; a run that logs the model twice (for instance a catalog
    ``MlflowModelTrackingDataset`` and ``pipeline_ml_factory`` both with ``registered_model_name``)
    registers several.
    """
    found = client.search_model_versions(f"run_id='{run_id}'")
    return sorted((v for v in found if v.name == model_name), key=lambda v: int(v.version))


def promote_if_better(
    client: MlflowClient,
    model_name: str,
    version: str | int,
    metric: str = GATE_METRIC,
    alias: str = CHAMPION_ALIAS,
) -> GateResult:
    """Move ``alias`` to ``version`` of ``model_name`` if its run's ``metric`` beats the
    champion's (strictly greater; a tie keeps the incumbent), and record the decision.

    Writes tags ``champion_gate.{decision,reason,metric,alias,candidate_value,champion_value,
    champion_version}`` and appends one line to the description of the candidate version
    (nothing is written on the champion; nothing at all when the candidate already is the
    champion), logs one INFO line, and returns the same as a dict.
    The alias is moved before the tags are written, so a ``promoted`` tag is never a lie.

    Raises:
        MlflowException: when the registry or tracking server cannot be read or written (a
            missing run or version is not an error: it counts as a missing metric or champion).
    """
    version = str(version)
    candidate = client.get_model_version(model_name, version)
    candidate_value = _run_metric(client, candidate.run_id, metric)
    champion_version, champion = _champion(client, model_name, alias)
    champion_missing = champion_version is not None and champion is None
    champion_value = None if champion is None else _run_metric(client, champion.run_id, metric)

    if champion_version == version:
        decision, reason = "already_champion", "already_champion"
    elif candidate_value is None:
        decision, reason = "no_metric", "candidate_without_metric"
    elif champion_version is None:
        decision, reason = "promoted", "no_champion"
    elif champion_missing:
        decision, reason = "promoted", "champion_version_missing"
    elif champion_value is None:
        decision, reason = "promoted", "champion_without_metric"
    elif candidate_value > champion_value:
        decision, reason = "promoted", "better"
    else:
        decision, reason = "kept_champion", "not_better"

    promoted = decision == "promoted"
    if promoted:
        client.set_registered_model_alias(model_name, alias, version)

    result = GateResult(
        model_name=model_name,
        version=version,
        alias=alias,
        metric=metric,
        decision=decision,
        reason=reason,
        promoted=promoted,
        candidate_value=candidate_value,
        champion_version=champion_version,
        champion_value=champion_value,
    )
    if decision != "already_champion":  # keep the record of the run that promoted it
        _record(client, candidate, result)
    logger.info("Champion gate: %s", _summary(result))
    return result


def _run_metric(client: MlflowClient, run_id: str | None, metric: str) -> float | None:
    """The last value of ``metric`` in run ``run_id``; None when the run or the metric is
    missing or the value is not finite."""
    if not run_id:
        return None
    try:
        value = client.get_run(run_id).data.metrics.get(metric)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return value if value is not None and math.isfinite(value) else None


def _champion(
    client: MlflowClient, model_name: str, alias: str
) -> tuple[str | None, ModelVersion | None]:
    """The version number the alias names (None when unset) and that version (None when unset
    or when the version no longer exists).

    The registered model's alias map is read rather than ``get_model_version_by_alias``, which
    raises the same way for an unset alias and for an alias whose version was deleted.
    """
    aliases = client.get_registered_model(model_name).aliases
    if alias not in aliases:
        return None, None
    champion_version = str(aliases[alias])
    try:
        return champion_version, client.get_model_version(model_name, champion_version)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return champion_version, None
        raise


def _record(client: MlflowClient, candidate: ModelVersion, result: GateResult) -> None:
    """Write the decision as tags and one description line on the candidate version."""
    tags = {
        "decision": result["decision"],
        "reason": result["reason"],
        "metric": result["metric"],
        "alias": result["alias"],
        "candidate_value": _number(result["candidate_value"]),
        "champion_value": _number(result["champion_value"]),
        "champion_version": result["champion_version"] or _MISSING,
    }
    for key, value in tags.items():
        client.set_model_version_tag(
            result["model_name"], result["version"], TAG_PREFIX + key, value
        )
    line = f"Champion gate: {_summary(result)}"
    description = f"{candidate.description}\n\n{line}" if candidate.description else line
    client.update_model_version(result["model_name"], result["version"], description=description)


def _number(value: float | None) -> str:
    return _MISSING if value is None else repr(value)


def _summary(result: GateResult) -> str:
    """One sentence: what happened to which version, with both numbers."""
    name, version, alias = result["model_name"], result["version"], result["alias"]
    metric, candidate, champion = (
        result["metric"],
        result["candidate_value"],
        result["champion_value"],
    )
    new = f"{name} version {version} ({metric} {_number(candidate)})"
    old = f"version {result['champion_version']} ({metric} {_number(champion)})"
    return {
        "no_champion": f"{new} is the first '{alias}': no version held the alias.",
        "champion_version_missing": (
            f"{new} is now '{alias}': the alias named version {result['champion_version']}, "
            "which no longer exists."
        ),
        "champion_without_metric": f"{new} is now '{alias}', replacing {old}, which has no "
        f"{metric} to compare.",
        "better": f"{new} is now '{alias}', replacing {old}.",
        "not_better": f"{new} does not beat '{alias}' {old}; the alias stays.",
        "candidate_without_metric": f"{new} has no {metric}: never promoted; '{alias}' stays "
        f"on {'no version' if result['champion_version'] is None else old}.",
        "already_champion": f"{new} already is '{alias}'.",
    }[result["reason"]]
