"""HTTP to package calls and back: the page, prediction, health and training routes."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import time
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from chest_ct_classifier.images.labels import DISPLAY_NAMES, LABELS
from chest_ct_classifier.images.preprocessing import (
    RASTER,
    ImageTooLargeError,
    SliceSource,
    UnreadableImageError,
    bytes_from_base64,
)
from chest_ct_classifier.model.ood import OUT_OF_DISTRIBUTION, UNCERTAIN, answer_status
from chest_ct_classifier.serving import audit_trail
from chest_ct_classifier.serving.errors import ApiError
from chest_ct_classifier.serving.model_card_page import served_model_card
from chest_ct_classifier.serving.request_batching import ForwardTimeoutError
from chest_ct_classifier.serving.served_model import (
    Classification,
    ExplanationsBusyError,
    ServedModel,
)
from chest_ct_classifier.serving.settings import RESEARCH_NOTICE
from chest_ct_classifier.serving.state import AppState
from chest_ct_classifier.serving.training_jobs import TrainingBusyError, TrainingJobs

blueprint = Blueprint("serving", __name__)

_TRUE = {"1", "true", "yes", "on"}
EXPLAIN_RETRY_AFTER_S = 2
FORWARD_RETRY_AFTER_S = 5
"""Seconds a refused explanation is told to wait: about one explanation on a 2-core CPU."""


def _state() -> AppState:
    return current_app.extensions["chest_ct"]


@blueprint.get("/")
def index() -> ResponseReturnValue:
    state = _state()
    return render_template(
        "index.html",
        labels=[{"label": label, "display_name": DISPLAY_NAMES[label]} for label in LABELS],
        max_upload_mb=state.settings.max_upload_bytes / 2**20,
        uncertain_below=state.settings.uncertain_below,
        notice=RESEARCH_NOTICE,
    )


@blueprint.get("/model-card")
def model_card() -> ResponseReturnValue:
    """The served model's card as a page; 404 (with the reason, still a page) without one."""
    state = _state()
    model = state.model
    card, reason = (
        served_model_card(model, state.settings) if model else (None, state.model_error or "")
    )
    labels = [{"label": label, "display_name": DISPLAY_NAMES[label]} for label in LABELS]
    served = model.info.precision if model else None  # this machine's, not the card's
    page = render_template(
        "model_card.html", card=card, reason=reason, labels=labels, served=served
    )
    return page, 200 if card else 404


@blueprint.get("/health")
def health() -> ResponseReturnValue:
    state = _state()
    model = state.model
    body: dict[str, Any] = {
        "status": "ok" if model else "no_model",
        "model_loaded": model is not None,
        "model": model.info.as_dict() if model else None,
        "precision": model.info.precision["served"] if model and model.info.precision else None,
        "batching": model.batching() if model else None,
        "model_card": "/model-card" if model else None,
        "uptime_seconds": round(time.monotonic() - state.started, 1),
        "training": {
            "enabled": state.jobs is not None,
            "running_job": state.jobs.running_job_id if state.jobs else None,
        },
    }
    if model is None:
        body["message"] = state.model_error
    return jsonify(body), 200 if model else 503


@blueprint.post("/predict")
def predict() -> ResponseReturnValue:
    state = _state()
    model = state.model  # this request finishes on this model, even if a new one comes in
    if model is None:
        raise ApiError(503, "no_model", state.model_error or "No model is loaded.")
    audit_trail.note(
        model={k: getattr(model.info, k) for k in ("name", "version", "fingerprint")},
        precision=model.info.precision["served"] if model.info.precision else None,
    )
    data = _image_bytes()
    audit_trail.note(**audit_trail.describe_input(data))
    explain = request.args.get("explain", "").strip().lower() in _TRUE
    try:
        results = model.classify(
            data, state.settings.max_image_pixels, explain, state.settings.dicom_window
        )
    except ExplanationsBusyError as exc:
        raise ApiError(
            429,
            "explanations_busy",
            "Every Grad-CAM explanation slot is busy: ask again in a moment, or send the request "
            "without ?explain=1 for the answer alone.",
            {"Retry-After": str(EXPLAIN_RETRY_AFTER_S)},
        ) from exc
    except ForwardTimeoutError as exc:
        raise ApiError(
            503,
            "model_timeout",
            f"The model did not answer in time ({exc}); the server has started over on the "
            "requests after this one. Ask again in a moment.",
            {"Retry-After": str(FORWARD_RETRY_AFTER_S)},
        ) from exc
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", f"Too large: {exc}.") from exc
    except UnreadableImageError as exc:
        raise ApiError(
            400,
            "unreadable_image",
            f"The file is not an image this app can read ({exc}). Send a PNG, JPEG or DICOM "
            "chest CT slice.",
        ) from exc
    answer = _prediction(results, model, state.settings.uncertain_below)
    audit_trail.note(
        status=answer["status"],
        label=answer["label"],
        probabilities=answer["probabilities"],
        ood_score=answer["ood"]["score"],
        n_frames=len(results),
    )
    return jsonify(answer)


def _image_bytes() -> bytes:
    """The uploaded image: multipart field ``file``, or JSON ``{"image": "<base64>"}``."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise ApiError(
                400, "missing_file", "The form has no 'file' field: send the image as 'file'."
            )
        data = upload.read()
    elif mimetype == "application/json":
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # nested deeper than Python's JSON parser goes
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise ApiError(
                400,
                "invalid_json",
                'Send a JSON object {"image": "<the image file, base64-encoded>"}.',
            )
        try:
            data = bytes_from_base64(body["image"])
        except UnreadableImageError as exc:
            raise ApiError(400, "invalid_base64", f"The 'image' field is {exc}.") from exc
    elif not mimetype and not request.content_length:
        raise ApiError(400, "empty_body", "The request is empty: send an image.")
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content type {mimetype or 'none'!r} is not accepted: send multipart/form-data "
            'with the image in field \'file\', or JSON {"image": "<base64>"}.',
        )
    if not data:
        raise ApiError(400, "empty_file", "The image file is empty.")
    return data


def _prediction(
    results: list[Classification], model: ServedModel, uncertain_below: float
) -> dict[str, Any]:
    """The answer for a file: its (first) image's answer, the model and the notice; with
    ``frames``, every frame's answer, for a multi-frame DICOM file."""
    answer: dict[str, Any] = {
        "request_id": audit_trail.request_id(),
        **_answer_of(results[0], uncertain_below),
        "model": model.info.as_dict(),
        "notice": RESEARCH_NOTICE,
    }
    if len(results) > 1:
        answer["frames"] = [_answer_of(result, uncertain_below) for result in results]
    return answer


def _answer_of(result: Classification, uncertain_below: float) -> dict[str, Any]:
    """One image's answer: ``status`` ok, uncertain or out_of_distribution (then no ``label``
    nor ``display_name``: the probabilities are the model's output, not a prediction)."""
    probabilities = {label: float(p) for label, p in zip(LABELS, result.probabilities, strict=True)}
    top = max(probabilities, key=probabilities.get)
    status = answer_status(probabilities[top], result.ood, uncertain_below)
    label = None if status == OUT_OF_DISTRIBUTION else top
    answer: dict[str, Any] = {
        "status": status,
        "label": label,
        "display_name": DISPLAY_NAMES[label] if label else None,
        "ood": result.ood.as_dict(),
        "probabilities": probabilities,
        "classes": [
            {"label": name, "display_name": DISPLAY_NAMES[name], "probability": p}
            for name, p in probabilities.items()
        ],
        "confidence": probabilities[top],
        "uncertain": status == UNCERTAIN,
        "slice": _slice(result.source),
    }
    if result.preview_png is not None:
        answer["preview_png"] = base64.b64encode(result.preview_png).decode("ascii")
    if result.heatmap_png is not None:
        answer["heatmap_png"] = base64.b64encode(result.heatmap_png).decode("ascii")
    return answer


def _slice(source: SliceSource) -> dict[str, Any] | None:
    """Which slice of a DICOM file (no patient data); None for other images."""
    return None if source == RASTER else dataclasses.asdict(source)


@blueprint.post("/train")
def start_training() -> ResponseReturnValue:
    jobs = _authorized_jobs()
    try:
        job = jobs.start()
    except TrainingBusyError as exc:
        raise ApiError(409, "training_busy", f"Not started: {exc}.") from exc
    body = {**job.as_dict(), "status_url": f"/train/{job.job_id}"}
    return jsonify(body), 202, {"Location": body["status_url"]}


@blueprint.get("/train/<job_id>")
def training_status(job_id: str) -> ResponseReturnValue:
    job = _authorized_jobs().get(job_id)
    if job is None:
        raise ApiError(404, "unknown_job", f"There is no training run {job_id!r}.")
    return jsonify(job.as_dict())


def _authorized_jobs() -> TrainingJobs:
    state = _state()
    if state.jobs is None:  # created only when a good token is configured
        raise ApiError(
            403,
            "training_disabled",
            f"Training through the API is disabled: {state.training_refused}."
            if state.training_refused
            else "Training through the API is disabled: set CHEST_CT_TRAIN_TOKEN on the server.",
        )
    wait = state.train_attempts.retry_after()
    if wait > 0:
        raise ApiError(
            429,
            "too_many_attempts",
            "Too many wrong tokens: /train listens again later.",
            {"Retry-After": str(int(wait) + 1)},
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), state.settings.train_token.encode()
    ):
        state.train_attempts.failed()
        raise ApiError(
            401,
            "unauthorized",
            "A valid token is required: send 'Authorization: Bearer <token>'.",
            {"WWW-Authenticate": 'Bearer realm="training"'},
        )
    return state.jobs
