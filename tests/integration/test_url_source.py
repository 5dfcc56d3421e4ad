"""A data source URL with credentials in it (user and password, a token in the query): the
download uses them, and nothing the run writes (console, logs, reports, MLflow parameters and
tags) holds them."""

from __future__ import annotations

import base64
import http.server
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT, run_tool
from tests.integration.conftest import project_copy

pytestmark = pytest.mark.slow  # a kedro run of the ingestion pipeline

USER, PASSWORD, TOKEN = "alice", "pass-marker-7f3a", "token-marker-91c2"


@pytest.fixture
def archive_server(tmp_path):
    """The bundled sample as a zip, served only with the right Basic credentials."""
    archive = Path(
        shutil.make_archive(str(tmp_path / "sample"), "zip", PROJECT_ROOT / "data/01_raw/sample")
    ).read_bytes()
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.headers.get("Authorization") != expected:
                self.send_error(401)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive)))
            self.send_header("ETag", '"sample-1"')
            self.end_headers()
            self.wfile.write(archive)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_credentials_in_the_source_url_are_used_and_written_nowhere(archive_server, tmp_path):
    (tmp_path / "project").mkdir()
    root = project_copy(tmp_path / "project")
    url = f"http://{USER}:{PASSWORD}@{archive_server}/sample.zip?token={TOKEN}"
    run = run_tool(
        root, "kedro", "run", "--env", "test", "--pipelines", "data_ingestion",
        "--params", f"data_ingestion.source={url}",
    )  # fmt: skip
    index = pd.read_csv(root / "data/02_intermediate/image_index.csv")
    assert index["readable"].all() and len(index) > 40  # the sample, downloaded with them

    written = [run.stdout, run.stderr, (root / "mlflow.db").read_bytes().decode("latin-1")]
    for folder in ("data", "logs", "mlruns"):
        for file in (root / folder).rglob("*"):
            written.append(str(file))
            if file.is_file() and file.suffix not in {".png", ".jpg", ".jpeg", ".zip"}:
                written.append(file.read_bytes().decode("latin-1"))
    text = "\n".join(written)
    assert "***@" in text  # the source is shown, redacted
    for secret in (PASSWORD, TOKEN):
        assert secret not in text
