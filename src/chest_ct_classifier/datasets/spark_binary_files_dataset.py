"""Every file under a source as a Spark DataFrame (Spark's ``binaryFile`` reader): the input of
batch scoring on Spark."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kedro.io import AbstractDataset, DatasetError

from chest_ct_classifier.images.sources import JUNK_PARTS, SourceError, materialize_source
from chest_ct_classifier.redaction import redact_url


class SparkBinaryFilesDataset(AbstractDataset[None, Any]):
    """Read-only: a DataFrame with one row per file under ``source``: ``image`` (the path
    relative to the source, as batch inference names it) and ``content`` (the bytes).

    ``source`` is any path Spark reads (a local folder, ``hdfs://``, ``s3a://``...), read
    recursively and filtered by ``glob`` (a file-name pattern); a local zip or an http(s) URL to
    one is first fetched and extracted safely under ``workdir``, as the local pipeline does.
    Hidden files, names starting with ``_`` (Spark skips both) and archive junk folders
    (``__MACOSX``) are left out.
    """

    def __init__(
        self,
        source: str,
        glob: str = "*",
        workdir: str = "data/01_raw/batch_scoring",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._source = str(source)
        self._glob = glob
        self._workdir = workdir
        self.metadata = metadata

    def load(self) -> Any:
        from pyspark.sql import SparkSession  # noqa: PLC0415
        from pyspark.sql import functions as F  # noqa: PLC0415

        root = self._root()
        spark = SparkSession.builder.getOrCreate()
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("pathGlobFilter", self._glob)
            .load(root)
        )
        prefix = _path_prefix(root)
        files = files.withColumn("image", F.regexp_replace("path", prefix, ""))
        junk = "|".join(re.escape(part) for part in sorted(JUNK_PARTS))
        return files.filter(~F.col("image").rlike(f"(^|/)({junk})/")).select("image", "content")

    def _root(self) -> str:
        scheme = urlparse(self._source).scheme
        if scheme and scheme not in ("http", "https", "file") and len(scheme) > 1:
            return self._source.rstrip("/")  # hdfs://, s3a://...: Spark reads it where it is
        try:
            return str(materialize_source(self._source, self._workdir).resolve())
        except SourceError as exc:
            raise DatasetError(str(exc)) from exc

    def save(self, data: None) -> None:
        raise DatasetError("SparkBinaryFilesDataset is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"source": redact_url(self._source), "glob": self._glob, "workdir": self._workdir}


def _path_prefix(root: str) -> str:
    """A pattern for what Spark's ``path`` column has before a file's path relative to
    ``root``: the folder (``file:`` URIs for local paths), or the folder of a single file."""
    if urlparse(root).scheme and len(urlparse(root).scheme) > 1:
        base = root if not Path(urlparse(root).path).suffix else root.rsplit("/", 1)[0]
        return "^" + re.escape(base.rstrip("/")) + "/"
    local = Path(root)
    base = local if local.is_dir() else local.parent
    return "^file:(//)?" + re.escape(base.as_posix().rstrip("/")) + "/"
