"""The model card of the model being served: the run's ``model_card.json`` (the catalog's file,
or the registered version's run artifact), shown only when it names the served weights."""

from __future__ import annotations

import json
import logging
from typing import Any

from chest_ct_classifier.serving.served_model import ServedModel
from chest_ct_classifier.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

MODEL_CARD_DATASET = "model_card"
MODEL_CARD_ARTIFACT = "model_card.json"


def served_model_card(
    model: ServedModel, settings: ServingSettings
) -> tuple[dict[str, Any] | None, str]:
    """The card, or None and why there is none for this model."""
    try:
        card = _registry_card(model) if model.info.source == "registry" else _file_card(settings)
    except Exception:  # a missing run artifact, an unreadable file: say so, never crash
        logger.exception("Cannot read the model card")
        card = None
    if card is None:
        return None, (
            "No model card was found for the served model: a training run (`kedro run`) writes "
            "one with its evaluation."
        )
    named = card.get("model", {}).get("fingerprint")
    if named != model.info.fingerprint:
        return None, (
            f"The model card found describes other weights (fingerprint {named}) than the ones "
            f"served ({model.info.fingerprint}): evaluate the served model to get its card."
        )
    return card, ""


def _file_card(settings: ServingSettings) -> dict[str, Any] | None:
    path = settings.catalog_file(MODEL_CARD_DATASET)
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def _registry_card(model: ServedModel) -> dict[str, Any] | None:
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.artifacts import load_dict  # noqa: PLC0415

    _, _, rest = model.info.location.partition("models:/")
    name, _, version = rest.rpartition("/")
    run_id = MlflowClient().get_model_version(name, version).run_id
    return load_dict(f"runs:/{run_id}/{MODEL_CARD_ARTIFACT}")
