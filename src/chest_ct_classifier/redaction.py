"""Credentials kept out of everything the project writes (logs, reports, MLflow parameters and
tags): a URL is shown with its user and password, and the values of query parameters named
like secrets (``token``, ``key``, ``X-Amz-Signature``...), replaced by ``***``.

A data source may be a URL with credentials in it (``https://user:password@host/ct.zip``, a
pre-signed link): the download needs them, nothing else does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

_SECRET_NAME = re.compile(
    r"token|key|secret|sig|password|passwd|pwd|credential|auth|session|code", re.IGNORECASE
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_VALUE_IN_TEXT = re.compile(r"(?<=[?&])([^=&\s'\"<>]+)=([^&\s'\"<>]*)")
"""A query parameter outside a whole URL: urllib3's errors name the path alone (``url: /a?b=c``)."""


def redact_url(url: str) -> str:
    """``url`` without its credentials; anything that is not a URL is returned unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(name, MASK if _SECRET_NAME.search(name) else value) for name, value in pairs],
            safe="*",
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: the same resource, whoever fetches it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def redact_text(text: str) -> str:
    """Every URL inside free text (a log line, an error message) redacted, and the secret
    values of query strings that appear without their host."""
    text = _URL_IN_TEXT.sub(lambda found: redact_url(found.group(0)), text)
    return _QUERY_VALUE_IN_TEXT.sub(
        lambda found: f"{found[1]}={MASK}" if _SECRET_NAME.search(found[1]) else found[0], text
    )


def redact_values(value: Any) -> Any:
    """A copy of parameters (dicts, lists, strings, at any depth) with every URL redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_values(item) for item in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter (conf/logging.yml puts it on every handler): each record's message is
    written with its URLs redacted, whichever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
