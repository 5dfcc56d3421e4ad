import base64
import hashlib
import http.server
import logging
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
    url_key,
)
from chest_ct_classifier.redaction import RedactingFilter


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


AUTH = ("alice", "s3cret-marker")


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www, with HTTP Range, a strong ETag (of
    the file's content) and If-Range, as a well-behaved server does.

    By name (the marks combine): ``cut-<name>`` is sent with its full Content-Length but only
    its first half, once, as a dropped connection would; ``noetag-`` has no validator (no
    ETag, no Last-Modified); ``ignoresifrange-`` sends the asked range of whatever file it has
    now; ``nolength-`` comes without Content-Length; ``auth-`` needs user alice, password
    s3cret-marker (Basic).
    """
    root = tmp_path / "www"
    root.mkdir()
    cut_once: set[str] = set()
    answered: list[tuple[str, int]] = []  # (file name, status) of every GET

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.split("?")[0].lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            if path.name.startswith("auth-"):
                expected = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_error(401)
                    return
            data = path.read_bytes()
            etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
            start = 0
            if (header := self.headers.get("Range", "")).startswith("bytes="):
                start = int(header[len("bytes=") :].split("-")[0])
            if_range = self.headers.get("If-Range")
            if if_range and if_range != etag and "ignoresifrange-" not in path.name:
                start = 0  # the file changed: the whole of it, as RFC 9110 says
            self.send_response(206 if start else 200)
            answered.append((path.name, 206 if start else 200))
            if "nolength-" not in path.name:
                self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if "noetag-" not in path.name:
                self.send_header("ETag", etag)
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
    yield root, f"http://127.0.0.1:{server.server_address[1]}", answered
    server.shutdown()


def downloaded(work: Path, url: str, name: str) -> Path:
    return work / "downloads" / url_key(url) / name


def test_url_source_is_downloaded_then_extracted(http_server, tmp_path):
    root, base_url, _ = http_server
    _zip(root / "ct.zip", {"Data/train/normal/a b (1).png": b"img"})
    work = tmp_path / "work"
    extracted = materialize_source(f"{base_url}/ct.zip", work)
    assert list_files(extracted) == ["Data/train/normal/a b (1).png"]
    assert downloaded(work, f"{base_url}/ct.zip", "ct.zip").is_file()
    assert not list((work / "downloads").rglob("*.part"))


def test_http_error_is_reported_and_leaves_no_partial_file(http_server, tmp_path):
    _, base_url, _ = http_server
    with pytest.raises(SourceError, match="HTTP 404"):
        materialize_source(f"{base_url}/missing.zip", tmp_path / "work")
    leftovers = (tmp_path / "work" / "downloads").rglob("*")
    assert not [p for p in leftovers if p.is_file() and p.name != ".lock"]


def test_unreachable_host_is_reported(tmp_path):
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceError, match="unreachable"):
        materialize_source(f"http://127.0.0.1:{port}/ct.zip", tmp_path / "work", timeout_s=5)


def test_checksum_is_verified_before_the_download_is_moved_in_place(http_server, tmp_path):
    root, base_url, _ = http_server
    archive = _zip(root / "ct.zip", {"train/normal/a.png": b"img"})
    digest = sha256_of_file(archive)
    with pytest.raises(SourceError, match="checksum mismatch"):
        materialize_source(f"{base_url}/ct.zip", tmp_path / "bad", sha256="0" * 64)
    assert not list((tmp_path / "bad" / "downloads").rglob("*.zip*"))
    extracted = materialize_source(f"{base_url}/ct.zip", tmp_path / "ok", sha256=digest.upper())
    assert list_files(extracted) == ["train/normal/a.png"]


def test_interrupted_download_says_so_keeps_no_final_file_and_resumes(http_server, tmp_path):
    root, base_url, answered = http_server
    payload = {f"train/normal/{i}.png": bytes(range(256)) * 40 for i in range(20)}
    archive = _zip(root / "cut-ct.zip", payload)
    downloads = downloaded(tmp_path / "work", f"{base_url}/cut-ct.zip", "cut-ct.zip").parent
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
    assert answered == [("cut-ct.zip", 200), ("cut-ct.zip", 206)]  # resumed, not restarted


def _cut_download(root: Path, base_url: str, work: Path, name: str) -> Path:
    """An interrupted download of ``name`` (served cut in half once): its partial file."""
    _zip(root / name, {f"train/normal/{i}.png": bytes(range(256)) * 40 for i in range(20)})
    with pytest.raises(SourceError, match="run again to resume"):
        materialize_source(f"{base_url}/{name}", work)
    return downloaded(work, f"{base_url}/{name}", name).with_suffix(".zip.part")


def _changed_upstream(root: Path, name: str) -> bytes:
    """The server's file replaced by another archive of the same size."""
    changed = _zip(root / "other.zip", {f"train/normal/{i}.png": bytes(range(255, -1, -1)) * 40
                                        for i in range(20)})  # fmt: skip
    assert changed.stat().st_size == (root / name).stat().st_size
    changed.replace(root / name)
    return (root / name).read_bytes()


def test_a_changed_upstream_file_is_not_resumed_but_downloaded_again(http_server, tmp_path, caplog):
    root, base_url, answered = http_server
    partial = _cut_download(root, base_url, tmp_path / "work", "cut-ct.zip")
    new = _changed_upstream(root, "cut-ct.zip")
    with caplog.at_level(logging.WARNING):
        materialize_source(f"{base_url}/cut-ct.zip", tmp_path / "work")
    assert partial.with_suffix("").read_bytes() == new  # the new file whole, no mix of the two
    assert answered[-1] == ("cut-ct.zip", 200)  # If-Range: the server sent all of it
    assert "changed upstream" in caplog.text


def test_a_server_that_sends_a_part_of_another_file_is_refused(http_server, tmp_path):
    root, base_url, _ = http_server
    name = "cut-ignoresifrange-ct.zip"
    partial = _cut_download(root, base_url, tmp_path / "work", name)
    new = _changed_upstream(root, name)
    with pytest.raises(SourceError, match="changed upstream"):
        materialize_source(f"{base_url}/{name}", tmp_path / "work")
    assert not partial.exists() and not partial.with_suffix("").exists()
    materialize_source(f"{base_url}/{name}", tmp_path / "work")  # next time: from the start
    assert partial.with_suffix("").read_bytes() == new


def test_without_a_validator_a_partial_download_starts_again(http_server, tmp_path):
    root, base_url, answered = http_server
    partial = _cut_download(root, base_url, tmp_path / "work", "cut-noetag-ct.zip")
    materialize_source(f"{base_url}/cut-noetag-ct.zip", tmp_path / "work")
    assert partial.with_suffix("").read_bytes() == (root / "cut-noetag-ct.zip").read_bytes()
    assert [status for _, status in answered] == [200, 200]  # never resumed on trust


def test_another_url_with_the_same_file_name_never_reuses_its_bytes(http_server, tmp_path):
    root, base_url, _ = http_server
    (root / "a").mkdir()
    (root / "b").mkdir()
    _zip(root / "a" / "ct.zip", {"train/normal/a.png": b"from a"})
    _zip(root / "b" / "ct.zip", {"train/normal/b.png": b"from b"})
    first = materialize_source(f"{base_url}/a/ct.zip", tmp_path / "work")
    second = materialize_source(f"{base_url}/b/ct.zip", tmp_path / "work")
    assert list_files(first) == ["train/normal/a.png"]
    assert list_files(second) == ["train/normal/b.png"]


@pytest.mark.parametrize("name", ["big.zip", "nolength-big.zip"])
def test_a_download_over_the_byte_limit_is_refused_and_removed(http_server, tmp_path, name):
    root, base_url, _ = http_server
    _zip(root / name, {f"train/normal/{i}.png": os.urandom(4096) for i in range(10)})
    with pytest.raises(SourceError, match="10,000-byte download limit"):
        materialize_source(f"{base_url}/{name}", tmp_path / "work", max_download_bytes=10_000)
    assert not list((tmp_path / "work" / "downloads").rglob("*.zip*"))


def test_a_download_without_checksum_is_logged_loudly_with_its_sha256(
    http_server, tmp_path, caplog
):
    root, base_url, _ = http_server
    archive = _zip(root / "ct.zip", {"train/normal/a.png": b"img"})
    with caplog.at_level(logging.WARNING):
        materialize_source(f"{base_url}/ct.zip", tmp_path / "work")
    warning = next(r for r in caplog.records if "NOT VERIFIED" in r.getMessage())
    assert warning.levelno == logging.WARNING
    assert sha256_of_file(archive) in warning.getMessage()  # what to pin, ready to paste
    caplog.clear()
    materialize_source(f"{base_url}/ct.zip", tmp_path / "w2", sha256=sha256_of_file(archive))
    assert "NOT VERIFIED" not in caplog.text


def test_a_second_concurrent_download_of_a_url_is_refused(http_server, tmp_path):
    import fcntl

    root, base_url, _ = http_server
    _zip(root / "ct.zip", {"train/normal/a.png": b"img"})
    folder = downloaded(tmp_path / "work", f"{base_url}/ct.zip", "ct.zip").parent
    folder.mkdir(parents=True)
    with (folder / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a first process downloading it would
        with pytest.raises(SourceError, match="another process is downloading"):
            materialize_source(f"{base_url}/ct.zip", tmp_path / "work")


def test_credentials_in_a_url_are_used_and_shown_nowhere(http_server, tmp_path, caplog):
    root, base_url, _ = http_server
    _zip(root / "auth-ct.zip", {"train/normal/a.png": b"img"})
    host = base_url.removeprefix("http://")
    url = f"http://{AUTH[0]}:{AUTH[1]}@{host}/auth-ct.zip?token=query-marker"
    caplog.handler.addFilter(RedactingFilter())  # as conf/logging.yml's handlers have it
    with caplog.at_level(logging.DEBUG):
        extracted = materialize_source(url, tmp_path / "work")
        assert list_files(extracted) == ["train/normal/a.png"]  # the credentials were sent
        with pytest.raises(SourceError) as refused:
            materialize_source(url.replace(AUTH[1], "wrong-marker"), tmp_path / "w2")
    assert "HTTP 401" in str(refused.value)
    written = (
        caplog.text
        + str(refused.value)
        + "".join(
            p.name + (p.read_text(errors="replace") if p.is_file() else "")
            for p in (tmp_path / "work").rglob("*")
        )
    )
    for secret in (AUTH[1], "wrong-marker", "query-marker"):
        assert secret not in written


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
