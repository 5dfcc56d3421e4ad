"""Every error the app answers is JSON with a readable sentence; no stack trace ever leaves it."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from chest_ct_classifier.serving import audit_trail

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success: HTTP status, a machine-readable code, a sentence."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _answer(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    audit_trail.note(status="refused", error=code)
    body = {"error": message, "code": code}
    if audit_trail.request_id():
        body["request_id"] = audit_trail.request_id()
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def register_error_handlers(app: Flask, max_upload_bytes: int) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> ResponseReturnValue:
        return _answer(error.status, error.code, error.message, error.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> ResponseReturnValue:
        if (request.content_length or 0) > max_upload_bytes:
            message = f"The request is larger than the {max_upload_bytes / 2**20:g} MB limit."
        else:  # Werkzeug's other form limits: too many parts, a huge non-file field
            message = "The form has too many parts or too large a field: send one file."
        return _answer(413, "payload_too_large", message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        code = (error.name or "error").lower().replace(" ", "_")
        # e.g. 405's Allow: which methods the route takes
        kept = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return _answer(error.code or 500, code, error.description or error.name, kept)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        logger.exception("Unexpected error", exc_info=error)
        return _answer(500, "internal_error", "Something went wrong on the server; it is logged.")
