"""The Flask application: settings from the environment, the model loaded once, the routes."""

from __future__ import annotations

import logging

from flask import Flask
from flask.typing import ResponseReturnValue
from flask_cors import CORS

from chest_ct_classifier.audit.hash_chain_log import HashChainLog
from chest_ct_classifier.serving import audit_trail
from chest_ct_classifier.serving.errors import register_error_handlers
from chest_ct_classifier.serving.routes import blueprint
from chest_ct_classifier.serving.settings import ServingSettings
from chest_ct_classifier.serving.state import AppState
from chest_ct_classifier.serving.training_jobs import TrainingJobs

logger = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 32
"""Characters a /train token needs before training through the API is enabled."""


def create_app(settings: ServingSettings | None = None) -> Flask:
    """The web app, serving the model the settings name (``CHEST_CT_*`` variables when None)."""
    settings = settings or ServingSettings.from_environment()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False

    state = AppState(settings)
    state.load_model()
    if settings.train_token and len(settings.train_token) < MIN_TOKEN_LENGTH:
        state.training_refused = (
            f"CHEST_CT_TRAIN_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters: training "
            "through the API stays disabled (`python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'` makes a good one)"
        )
        logger.error("%s", state.training_refused)
    elif settings.train_token:
        state.jobs = TrainingJobs(settings.train_command, settings.project_path, state.switch_model)
    app.extensions["chest_ct"] = state

    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins))

    app.register_blueprint(blueprint)
    register_error_handlers(app, settings.max_upload_bytes)
    audit_trail.install(app, HashChainLog(settings.audit_log) if settings.audit_log else None)
    app.after_request(_security_headers)
    return app


def _security_headers(response: ResponseReturnValue):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'",
    )
    return response
