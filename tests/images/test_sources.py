import http.server
import os
import socket
import sys
import threading
import types
import zipfile
from pathlib import Path

import pytest

from chest_ct_classifier.images.sources import (
    SourceError,
    extract_zip,
    list_files,
    materialize_source,
    sha256_of_file,
)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_folder_source_is_used_in_place(sample_root, tmp_path):
    assert materialize_source(str(sample_root), tmp_path) == sample_root
    files = list_files(sample_root)
    assert "Data/test/normal" in {f.rsplit("/", 1)[0] for f in files}
    assert not any(f.startswith(".") for f in files)


def test_zip_source_is_extracted_once_with_archive_paths(tmp_path):
    archive = _zip(tmp_path / "data.zip", {"Data/valid/normal/6 - Copy.png": b"x"})
    root = materialize_source(str(archive), tmp_path / "work")
    assert list_files(root) == ["Data/valid/normal/6 - Copy.png"]
    marker = root / "Data" / "marker"
    marker.write_text("kept")
    assert materialize_source(str(archive), tmp_path / "work") == root  # reused, not re-extracted
    assert marker.exists()


def test_hidden_and_macos_junk_files_are_not_listed(tmp_path):
    archive = _zip(
        tmp_path / "a.zip",
        {"train/normal/a.png": b"x", "__MACOSX/train/._a.png": b"x", "train/.DS_Store": b"x"},
    )
    assert list_files(materialize_source(str(archive), tmp_path / "w")) == ["train/normal/a.png"]


@pytest.mark.parametrize(
    ("member", "reason"),
    [("../evil.png", "leaves the target"), ("/etc/evil.png", "absolute"), ("a/../../x", "leaves")],
)
def test_unsafe_members_are_rejected_and_nothing_is_written(tmp_path, member, reason):
    archive = _zip(tmp_path / "evil.zip", {"ok.png": b"x", member: b"x"})
    with pytest.raises(SourceError, match=reason):
        extract_zip(archive, tmp_path / "out" / "extracted")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.png").exists()


def test_symlink_members_are_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SourceError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_oversized_archives_are_rejected(tmp_path):
    archive = _zip(tmp_path / "big.zip", {"a.png": b"0" * 5000})
    with pytest.raises(SourceError, match="over the limit"):
        extract_zip(archive, tmp_path / "out", max_uncompressed_bytes=1000)
    with pytest.raises(SourceError, match="over the limit"):
        extract_zip(archive, tmp_path / "out", max_members=0)


def test_missing_source_and_broken_zip_say_why(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        materialize_source(str(tmp_path / "nope.zip"), tmp_path)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(_zip(tmp_path / "ok.zip", {"a.png": b"x" * 100}).read_bytes()[:-30])
    with pytest.raises(SourceError):
        extract_zip(broken, tmp_path / "out")


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www, with HTTP Range support.

    A file named ``cut-<name>`` is sent with its full Content-Length but only its first half,
    once, as a dropped connection would; later requests get the rest.
    """
    root = tmp_path / "www"
    root.mkdir()
    cut_once: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            if (header := self.headers.get("Range", "")).startswith("bytes="):
                start = int(header[len("bytes=") :].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if path.name.startswith("cut-") and path.name not in cut_once:
                cut_once.add(path.name)
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_is_downloaded_then_extracted(http_server, tmp_path):
    root, base_url = http_server
    _zip(root / "ct.zip", {"Data/train/normal/a b (1).png": b"img"})
    work = tmp_path / "work"
    extracted = materialize_source(f"{base_url}/ct.zip", work)
    assert list_files(extracted) == ["Data/train/normal/a b (1).png"]
    assert (work / "downloads" / "ct.zip").is_file()
    assert not list((work / "downloads").glob("*.part"))


def test_http_error_is_reported_and_leaves_no_partial_file(http_server, tmp_path):
    _, base_url = http_server
    with pytest.raises(SourceError, match="HTTP 404"):
        materialize_source(f"{base_url}/missing.zip", tmp_path / "work")
    assert not list((tmp_path / "work" / "downloads").iterdir())


def test_unreachable_host_is_reported(tmp_path):
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceError, match="unreachable"):
        materialize_source(f"http://127.0.0.1:{port}/ct.zip", tmp_path / "work", timeout_s=5)


def test_checksum_is_verified_before_the_download_is_moved_in_place(http_server, tmp_path):
    root, base_url = http_server
    archive = _zip(root / "ct.zip", {"train/normal/a.png": b"img"})
    digest = sha256_of_file(archive)
    with pytest.raises(SourceError, match="checksum mismatch"):
        materialize_source(f"{base_url}/ct.zip", tmp_path / "bad", sha256="0" * 64)
    assert not list((tmp_path / "bad" / "downloads").iterdir())
    extracted = materialize_source(f"{base_url}/ct.zip", tmp_path / "ok", sha256=digest.upper())
    assert list_files(extracted) == ["train/normal/a.png"]


def test_interrupted_download_says_so_keeps_no_final_file_and_resumes(http_server, tmp_path):
    root, base_url = http_server
    payload = {f"train/normal/{i}.png": bytes(range(256)) * 40 for i in range(20)}
    archive = _zip(root / "cut-ct.zip", payload)
    downloads = tmp_path / "work" / "downloads"
    with pytest.raises(SourceError, match="run again to resume"):
        materialize_source(f"{base_url}/cut-ct.zip", tmp_path / "work")
    assert not (downloads / "cut-ct.zip").exists()
    assert 0 < (downloads / "cut-ct.zip.part").stat().st_size < archive.stat().st_size

    extracted = materialize_source(
        f"{base_url}/cut-ct.zip", tmp_path / "work", sha256=sha256_of_file(archive)
    )
    assert (downloads / "cut-ct.zip").read_bytes() == archive.read_bytes()
    assert not (downloads / "cut-ct.zip.part").exists()
    assert len(list_files(extracted)) == 20


def test_local_archive_with_wrong_checksum_is_refused(tmp_path):
    archive = _zip(tmp_path / "ct.zip", {"train/normal/a.png": b"img"})
    with pytest.raises(SourceError, match="checksum mismatch"):
        materialize_source(str(archive), tmp_path / "work", sha256="f" * 64)
    assert not (tmp_path / "work").exists()


@pytest.fixture
def fake_kaggle(monkeypatch, tmp_path):
    """A stand-in for the Kaggle client module: the real one needs the network and an account."""
    archive = _zip(tmp_path / "served.zip", {"Data/train/normal/a.png": b"img"})
    calls = []

    class KaggleApi:
        def authenticate(self):
            if "KAGGLE_KEY" not in os.environ:
                raise OSError("Could not find kaggle.json")

        def dataset_download_files(self, dataset, path, quiet, unzip):
            calls.append(dataset)
            (Path(path) / "chest-ctscan-images.zip").write_bytes(archive.read_bytes())

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    return calls


def test_kaggle_source_downloads_once_with_credentials(fake_kaggle, monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    source = "kaggle://mohamedhanyyy/chest-ctscan-images"
    root = materialize_source(source, tmp_path / "work")
    assert list_files(root) == ["Data/train/normal/a.png"]
    assert materialize_source(source, tmp_path / "work") == root
    assert fake_kaggle == ["mohamedhanyyy/chest-ctscan-images"]
    assert not list((tmp_path / "work" / "downloads").glob(".kaggle-*"))


def test_kaggle_without_credentials_says_how_to_set_them(fake_kaggle, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    with pytest.raises(SourceError, match="KAGGLE_USERNAME and KAGGLE_KEY"):
        materialize_source("kaggle://owner/data", tmp_path / "work")


def test_kaggle_reference_must_name_owner_and_dataset(tmp_path):
    with pytest.raises(SourceError, match="kaggle://owner/dataset"):
        materialize_source("kaggle://just-a-name", tmp_path / "work")


def test_kaggle_without_the_client_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", None)  # import fails
    with pytest.raises(SourceError, match="pip install kaggle"):
        materialize_source("kaggle://owner/data", tmp_path / "work")
