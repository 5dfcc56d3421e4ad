import zipfile

import pytest
from kedro.io import DatasetError

from chest_ct_classifier.datasets.image_source_dataset import ImageSourceDataset


def test_zip_loads_lazy_readers_by_archive_path(sample_root, tmp_path):
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sample_root.rglob("*.png"):
            zf.write(p, p.relative_to(sample_root).as_posix())
    files = ImageSourceDataset(str(archive), workdir=str(tmp_path / "raw")).load()
    path = "Data/train/normal/n7.png"
    assert files[path]() == (sample_root / path).read_bytes()


def test_single_file_source(sample_root, tmp_path):
    image = next(sample_root.rglob("*.png"))
    files = ImageSourceDataset(str(image), workdir=str(tmp_path)).load()
    assert list(files) == [image.name]


def test_missing_source_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        ImageSourceDataset(str(tmp_path / "absent"), workdir=str(tmp_path)).load()
