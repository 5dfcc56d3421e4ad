"""Turn a data source (folder, zip archive, http(s) URL to a zip, single image) into a folder.

Used by the catalog's image-source dataset; nodes never call it. Downloads and extractions are
atomic (temporary name, then rename), so an interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse, urlsplit

import requests
from tqdm.auto import tqdm

from chest_ct_classifier.redaction import redact_text, redact_url, url_without_userinfo

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
JUNK_PARTS = frozenset({"__MACOSX", ".git", ".dvc"})
"""Archive folders that hold no data: macOS resource forks and version-control folders."""


class SourceError(RuntimeError):
    """The data source cannot be fetched, read or safely extracted."""


KAGGLE_PREFIX = "kaggle://"
DEFAULT_MAX_DOWNLOAD_BYTES = 10 * 1024**3


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def materialize_source(
    source: str,
    workdir: str | os.PathLike,
    *,
    max_members: int = 100_000,
    max_uncompressed_bytes: int = 10 * 1024**3,
    timeout_s: float = 30.0,
    sha256: str | None = None,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> Path:
    """Local path holding the source's files: the folder itself, or where its zip was extracted.

    A URL is downloaded to ``workdir/downloads/<key of the URL>`` (:func:`download`); a zip is
    extracted once to ``workdir/extracted/<name>-<sha256 prefix>`` and reused while its content
    is unchanged. ``sha256``, when given, must match the downloaded or local archive.
    """
    workdir = Path(workdir)
    if is_url(source):
        source_path = download(
            source,
            workdir / "downloads",
            timeout_s=timeout_s,
            sha256=sha256,
            max_bytes=max_download_bytes,
        )
    elif source.startswith(KAGGLE_PREFIX):
        source_path = download_kaggle(source, workdir / "downloads", sha256=sha256)
    else:
        source_path = Path(source).expanduser()
        if not source_path.exists():
            raise SourceError(f"data source not found: '{source}' (a folder, a .zip or a URL)")
        if source_path.is_file():
            verify_sha256(source_path, sha256)
    if source_path.is_dir():
        return source_path
    if zipfile.is_zipfile(source_path):
        return extract_zip(
            source_path,
            workdir / "extracted",
            max_members=max_members,
            max_uncompressed_bytes=max_uncompressed_bytes,
        )
    return source_path  # a single file: the caller lists just that file


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root (any depth), sorted; hidden files skipped."""
    if root.is_file():
        return [root.name]
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in JUNK_PARTS for part in relative.parts):
            continue
        if path.is_file():
            files.append(relative.as_posix())
    return sorted(files)


def sha256_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raise SourceError when ``expected`` is given and the file's sha256 differs."""
    if not expected:
        return
    actual = sha256_of_file(path)
    if actual != expected.lower():
        raise SourceError(
            f"checksum mismatch for {path.name}: expected sha256 {expected.lower()}, got {actual}"
        )


def download(
    url: str,
    target_dir: Path,
    *,
    timeout_s: float = 30.0,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download url into ``target_dir/<key of the URL>/<name>``; verify it; only then move it
    in place. Another URL whose file has the same name gets a folder of its own.

    The bytes go to ``<name>.part`` first. An interrupted download keeps that file, with the
    server's validator of it (a strong ETag, else Last-Modified), and the next call resumes it
    only when the server proves it is the same file: ``If-Range`` with that validator, then a
    206 whose Content-Range starts where the partial file ends and whose validator matches. A
    server that sends the whole file instead is downloaded again from the start; one that sends
    a part of another file is refused. Over ``max_bytes`` (announced or received), a failed
    checksum or an HTTP error removes the partial file. A finished earlier download is reused
    after the same checksum check. Without ``sha256`` the log warns that nothing was verified.
    """
    shown = redact_url(url)
    name = Path(urlsplit(url).path).name or "download.zip"
    folder = target_dir / url_key(url)
    target = folder / name
    if target.exists():
        verify_sha256(target, sha256)
        logger.info("Reusing earlier download %s of %s", target, shown)
        _warn_when_unverified(shown, target, sha256)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _only_downloader(folder, shown):
        partial = folder / (name + ".part")
        _fetch(url, shown, partial, timeout_s, max_bytes)
        try:
            verify_sha256(partial, sha256)
        except SourceError:
            _remove_partial(partial)
            raise
        partial.replace(target)
        _validator_file(partial).unlink(missing_ok=True)
    _warn_when_unverified(shown, target, sha256)
    return target


def url_key(url: str) -> str:
    """The folder name of a URL's downloads: its sha256 without the credentials (16 hex)."""
    return hashlib.sha256(url_without_userinfo(url).encode()).hexdigest()[:16]


def _fetch(url: str, shown: str, partial: Path, timeout_s: float, max_bytes: int) -> None:
    name = partial.stem
    offset, validator = _resumable(partial)
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
    logger.info("Downloading %s%s", shown, f" (resuming at {offset} bytes)" if offset else "")
    try:
        with requests.get(url, stream=True, timeout=timeout_s, headers=headers) as response:
            response.raise_for_status()
            if offset and response.status_code == 206:
                total = _same_file_continued(response, offset, validator, shown)
            else:
                if offset:
                    logger.warning(
                        "%s changed upstream since the partial download (or the server cannot "
                        "resume): downloading it again from the start",
                        shown,
                    )
                offset = 0
                _start_partial(partial, response)
                length = int(response.headers.get("content-length", 0))
                total = length or None
            if total is not None and total > max_bytes:
                raise SourceError(
                    f"{shown} is {total:,} bytes, over the {max_bytes:,}-byte download limit"
                )
            with (
                partial.open("ab" if offset else "wb") as out,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    if out.tell() + len(chunk) > max_bytes:
                        raise SourceError(
                            f"{shown} sent more than the {max_bytes:,}-byte download limit"
                        )
                    out.write(chunk)
                    bar.update(len(chunk))
    except SourceError:
        _remove_partial(partial)
        raise
    # `from None`: requests' own messages name the URL whole (query secrets too), and a
    # traceback shows chained exceptions as they are; each message below says what happened.
    except requests.HTTPError as exc:
        _remove_partial(partial)
        raise SourceError(f"download of {shown} failed: HTTP {exc.response.status_code}") from None
    except requests.ConnectionError as exc:
        if partial.exists() and partial.stat().st_size > offset:
            raise SourceError(
                f"download of {shown} was interrupted at {partial.stat().st_size} bytes "
                f"({redact_text(str(exc))}); run again to resume"
            ) from None
        raise SourceError(
            f"cannot download {shown}: host unreachable or no network ({redact_text(str(exc))})"
        ) from None
    except requests.RequestException as exc:
        raise SourceError(
            f"download of {shown} failed: {redact_text(str(exc))}; run again to resume"
        ) from None
    if total is not None and partial.stat().st_size != total:
        raise SourceError(
            f"download of {shown} is incomplete: {partial.stat().st_size} of {total} bytes; "
            "run again to resume"
        )


def _validator_file(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _resumable(partial: Path) -> tuple[int, str | None]:
    """Where a partial download ends and the validator it was started with; (0, None) when
    there is nothing to resume or no validator to prove the server's file unchanged."""
    try:
        validator = json.loads(_validator_file(partial).read_text())["validator"]
        offset = partial.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None
    return (offset, validator) if offset and validator else (0, None)


def _response_validator(response: requests.Response) -> str | None:
    """A validator ``If-Range`` accepts: a strong ETag, else Last-Modified (weak ETags may
    not be used for ranges)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _start_partial(partial: Path, response: requests.Response) -> None:
    partial.unlink(missing_ok=True)
    validator = _response_validator(response)
    if validator:
        _validator_file(partial).write_text(json.dumps({"validator": validator}))
    else:
        _validator_file(partial).unlink(missing_ok=True)


def _same_file_continued(
    response: requests.Response, offset: int, validator: str | None, shown: str
) -> int | None:
    """The file's total size, after checking that a 206 continues the partial download."""
    content_range = response.headers.get("Content-Range", "")
    found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
    if not found or int(found[1]) != offset:
        raise SourceError(
            f"resuming {shown} at byte {offset} got Content-Range '{content_range}': not the "
            "rest of the partial download; it is removed, run again to download from the start"
        )
    now = _response_validator(response)
    if now is not None and now != validator:
        raise SourceError(
            f"{shown} changed upstream since the partial download ({validator} then, {now} "
            "now) and the server sent a part of the new file; the partial download is removed, "
            "run again to download from the start"
        )
    return None if found[3] == "*" else int(found[3])


def _remove_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _validator_file(partial).unlink(missing_ok=True)


@contextlib.contextmanager
def _only_downloader(folder: Path, shown: str) -> Iterator[None]:
    """One download of a URL at a time: a second process would write the same partial file."""
    with (folder / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SourceError(f"another process is downloading {shown} now") from exc
        yield


def _warn_when_unverified(shown: str, path: Path, sha256: str | None) -> None:
    if sha256:
        return
    logger.warning(
        "NOT VERIFIED: no sha256 was given for %s, so nothing shows that these are the bytes "
        "you meant to train on. To pin them, set data_ingestion.sha256 (conf/base/globals.yml: "
        "data_sha256) to %s",
        shown,
        sha256_of_file(path),
    )


def download_kaggle(reference: str, target_dir: Path, *, sha256: str | None = None) -> Path:
    """Download a Kaggle dataset (``kaggle://owner/name``) as a zip, with the user's credentials.

    Needs the ``kaggle`` client (``pip install kaggle``) and credentials in
    ``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``.
    """
    dataset = reference[len(KAGGLE_PREFIX) :].strip("/")
    if dataset.count("/") != 1 or not all(dataset.split("/")):
        raise SourceError(f"Kaggle source must look like kaggle://owner/dataset, got {reference}")
    target = target_dir / f"{dataset.replace('/', '__')}.zip"
    if target.exists():
        verify_sha256(target, sha256)
        logger.info("Reusing earlier Kaggle download %s", target)
        return target
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: PLC0415 - optional
    except ImportError as exc:
        raise SourceError(
            f"{reference} needs the Kaggle client: pip install kaggle "
            "(and your credentials in ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)"
        ) from exc
    api = KaggleApi()
    try:
        api.authenticate()
    except Exception as exc:
        raise SourceError(
            f"Kaggle credentials missing or invalid ({exc}): put kaggle.json in ~/.kaggle "
            "or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from exc
    target_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kaggle-", dir=target_dir))
    try:
        api.dataset_download_files(dataset, path=str(staging), quiet=False, unzip=False)
        archives = list(staging.glob("*.zip"))
        if len(archives) != 1:
            raise SourceError(f"Kaggle download of {dataset} gave no single zip: {archives}")
        verify_sha256(archives[0], sha256)
        archives[0].replace(target)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"Kaggle download of {dataset} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise SourceError(f"unsafe archive member '{name}': absolute path")
    if ".." in path.parts:
        raise SourceError(f"unsafe archive member '{name}': path leaves the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise SourceError(f"unsafe archive member '{name}': symbolic link")


def extract_zip(
    archive: Path,
    extracted_root: Path,
    *,
    max_members: int = 100_000,
    max_uncompressed_bytes: int = 10 * 1024**3,
) -> Path:
    """Extract a zip safely and atomically; return the folder (reused if already extracted)."""
    target = extracted_root / f"{archive.stem}-{sha256_of_file(archive)[:12]}"
    if target.is_dir():
        logger.info("Reusing %s, extracted earlier from %s", target, archive)
        return target
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > max_members:
                raise SourceError(
                    f"archive {archive} has {len(members)} members, over the limit {max_members}"
                )
            total = sum(m.file_size for m in members)
            if total > max_uncompressed_bytes:
                raise SourceError(
                    f"archive {archive} would extract to {total} bytes, "
                    f"over the limit {max_uncompressed_bytes}"
                )
            for member in members:
                _check_member(member)
            extracted_root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=extracted_root))
            try:
                zf.extractall(staging)
                staging.replace(target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except zipfile.BadZipFile as exc:
        raise SourceError(f"archive {archive} is not a valid zip: {exc}") from exc
    logger.info("Extracted %d files from %s to %s", len(members), archive, target)
    return target
