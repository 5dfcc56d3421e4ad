import logging

import pytest

from chest_ct_classifier.redaction import (
    RedactingFilter,
    redact_text,
    redact_url,
    redact_values,
    url_without_userinfo,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:pw@example.org/ct.zip", "https://***@example.org/ct.zip"),
        ("https://token@example.org:8443/a/ct.zip", "https://***@example.org:8443/a/ct.zip"),
        (
            "https://bucket.s3.amazonaws.com/ct.zip?X-Amz-Credential=AK&X-Amz-Signature=ab&v=2",
            "https://bucket.s3.amazonaws.com/ct.zip?X-Amz-Credential=***&X-Amz-Signature=***&v=2",
        ),
        ("https://example.org/ct.zip?access_token=t&dl=1", "https://example.org/ct.zip?access_token=***&dl=1"),
        ("https://example.org/ct.zip", "https://example.org/ct.zip"),
        ("data/01_raw/sample", "data/01_raw/sample"),
        ("kaggle://owner/dataset", "kaggle://owner/dataset"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_credentials(url, shown):
    assert redact_url(url) == shown


def test_urls_and_bare_query_strings_inside_text_are_redacted():
    text = "GET /ct.zip?token=abc&x=1 failed; source http://u:p@host/ct.zip; plain text stays"
    assert redact_text(text) == (
        "GET /ct.zip?token=***&x=1 failed; source http://***@host/ct.zip; plain text stays"
    )


def test_parameters_are_redacted_at_any_depth_and_left_unchanged():
    parameters = {"source": "http://u:p@h/x.zip", "split": {"seed": 42, "paths": ["ftp://a:b@c/"]}}
    assert redact_values(parameters) == {
        "source": "http://***@h/x.zip",
        "split": {"seed": 42, "paths": ["ftp://***@c/"]},
    }
    assert parameters["source"] == "http://u:p@h/x.zip"  # a copy


def test_the_same_resource_has_one_key_whoever_fetches_it():
    assert url_without_userinfo("https://a:b@h:1/x?y=1") == "https://h:1/x?y=1"


def test_the_log_filter_redacts_what_any_library_logs(caplog):
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logging.getLogger("urllib3.example").info("GET %s", "https://u:secret@h/x?sig=s3")
    assert caplog.records[0].getMessage() == "GET https://***@h/x?sig=***"
    assert "secret" not in caplog.text and "s3" not in caplog.text
