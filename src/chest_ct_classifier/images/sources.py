"""Turn a data source (folder, zip archive, http(s) URL to a zip, single image) into a folder.

Used by the catalog's image-source dataset; nodes never call it. Downloads and extractions are
atomic (temporary name, then rename), so an interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
JUNK_PARTS = frozenset({"__MACOSX", ".git", ".dvc"})
"""Archive folders that hold no data: macOS resource forks and version-control folders."""


class SourceError(RuntimeError):
    """The data source cannot be fetched, read or safely extracted."""


KAGGLE_PREFIX = "kaggle://"


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
) -> Path:
    """Local path holding the source's files: the folder itself, or where its zip was extracted.

    A URL is downloaded to ``workdir/downloads``; a zip is extracted once to
    ``workdir/extracted/<name>-<sha256 prefix>`` and reused while its content is unchanged.
    ``sha256``, when given, must match the downloaded or local archive.
    """
    workdir = Path(workdir)
    if is_url(source):
        source_path = download(source, workdir / "downloads", timeout_s=timeout_s, sha256=sha256)
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
    url: str, target_dir: Path, *, timeout_s: float = 30.0, sha256: str | None = None
) -> Path:
    """Download url into target_dir with a progress bar; verify it; only then move it in place.

    The bytes go to ``<name>.part`` first. An interrupted download keeps that file, and the
    next call resumes it (HTTP Range) when the server allows; a failed checksum or an HTTP
    error removes it. A finished earlier download is reused after the same checksum check.
    """
    name = Path(urlparse(url).path).name or "download.zip"
    target = target_dir / name
    if target.exists():
        verify_sha256(target, sha256)
        logger.info("Reusing earlier download %s", target)
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    logger.info("Downloading %s to %s%s", url, target, f" (resuming at {offset})" if offset else "")
    try:
        with requests.get(url, stream=True, timeout=timeout_s, headers=headers) as response:
            response.raise_for_status()
            if response.status_code != 206:  # the server ignored Range: start again
                offset = 0
            length = int(response.headers.get("content-length", 0))
            total = offset + length if length else None
            with (
                partial.open("ab" if offset else "wb") as out,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.HTTPError as exc:
        partial.unlink(missing_ok=True)
        raise SourceError(f"download of {url} failed: HTTP {exc.response.status_code}") from exc
    except requests.ConnectionError as exc:
        if partial.exists() and partial.stat().st_size > offset:
            raise SourceError(
                f"download of {url} was interrupted at {partial.stat().st_size} bytes "
                f"({exc}); run again to resume"
            ) from exc
        raise SourceError(f"cannot download {url}: host unreachable or no network ({exc})") from exc
    except requests.RequestException as exc:
        raise SourceError(f"download of {url} failed: {exc}; run again to resume") from exc
    if total is not None and partial.stat().st_size != total:
        raise SourceError(
            f"download of {url} is incomplete: {partial.stat().st_size} of {total} bytes; "
            "run again to resume"
        )
    try:
        verify_sha256(partial, sha256)
    except SourceError:
        partial.unlink()
        raise
    partial.replace(target)
    return target


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
