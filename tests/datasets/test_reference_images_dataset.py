import io

import pytest
from kedro.io import DatasetError
from PIL import Image

from chest_ct_classifier.datasets.reference_images_dataset import SYNTHETIC, ReferenceImagesDataset


def test_package_and_drawn_images_load_offline_as_png():
    images = ReferenceImagesDataset({"photo": ["chelsea"], "text": ["text"]}, seed=1).load()
    assert set(images) == {"photo/chelsea", "text/text", *SYNTHETIC}
    for key, load in images.items():
        image = Image.open(io.BytesIO(load()))
        assert image.format == "PNG" and min(image.size) >= 100, key


def test_an_unknown_image_is_an_error():
    with pytest.raises(DatasetError, match="no image 'nothing'"):
        ReferenceImagesDataset({"photo": ["nothing"]}).load()
