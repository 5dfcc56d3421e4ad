"""One audit line per ``/predict`` request, answered or refused: who answered what, with which
model, how fast. No pixels, no file names and no client address: the input is known by its
sha256 and size only.

The route fills ``flask.g.audit`` as it learns things (the input's hash, the answer); an
``after_request`` function adds the HTTP status, the request id (also sent back as
``X-Request-ID`` and ``request_id``) and the latency, and appends the line to the app's
:class:`~chest_ct_classifier.audit.hash_chain_log.HashChainLog`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from PIL import Image

from chest_ct_classifier.audit.hash_chain_log import HashChainLog
from chest_ct_classifier.images.dicom import header_size, is_dicom

logger = logging.getLogger(__name__)

AUDITED_ENDPOINTS = {"serving.predict": "/predict"}
REQUEST_ID_HEADER = "X-Request-ID"


def describe_input(data: bytes) -> dict[str, Any]:
    """The input as the log knows it: its sha256, its size, and the image's size when its
    header says (read without decoding the pixels; a DICOM file's Columns and Rows)."""
    described: dict[str, Any] = {
        "input_sha256": hashlib.sha256(data).hexdigest(),
        "input_bytes": len(data),
    }
    described["image_width"] = described["image_height"] = None
    try:
        if is_dicom(data):
            size = header_size(data)
        else:
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
        if size:
            described["image_width"], described["image_height"] = size
    except Exception:  # not an image: the answer says so, the log records the refusal
        pass
    return described


def note(**fields: Any) -> None:
    """Add fields to this request's audit line."""
    g.setdefault("audit", {}).update(fields)


def request_id() -> str | None:
    return g.get("request_id")


def install(app: Flask, log: HashChainLog | None) -> None:
    """Give every request an id and a start time; audit the endpoints that answer."""

    @app.before_request
    def _start() -> None:
        g.request_id = uuid.uuid4().hex
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        if request.endpoint not in AUDITED_ENDPOINTS:
            return response
        response.headers[REQUEST_ID_HEADER] = g.request_id
        if log is not None:
            record = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": g.request_id,
                "endpoint": AUDITED_ENDPOINTS[request.endpoint],
                "http_status": response.status_code,
                **g.get("audit", {}),
                "latency_ms": round((time.perf_counter() - g.request_started) * 1000, 1),
            }
            try:
                log.append(record)
            except OSError:
                logger.exception("Cannot write the audit line of request %s", g.request_id)
        return response
