import io

import numpy as np
from PIL import Image, ImageEnhance

from chest_ct_classifier.images.duplicates import near_duplicate_groups, perceptual_hash


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_re_encoded_and_resized_copies_hash_close_and_other_scans_far(sample_images):
    paths = [p for p in sample_images if "/train/" in p]
    original = _image(sample_images[paths[0]])
    jpeg = io.BytesIO()
    original.save(jpeg, format="JPEG", quality=80)
    resized = original.resize((original.width // 2, original.height // 2))
    brighter = ImageEnhance.Brightness(original).enhance(1.1)
    hashes = [perceptual_hash(i) for i in (original, _image(jpeg.getvalue()), resized, brighter)]
    others = [perceptual_hash(_image(sample_images[p])) for p in paths[1:]]

    groups = near_duplicate_groups(hashes + others, max_distance=2)
    assert len(set(groups[:4])) == 1, "copies of one image must share a group"
    assert groups[0] not in set(groups[4:]), "other real scans must not join it"


def test_groups_are_transitive_and_numbered_in_order():
    hashes = ["0000000000000000", "0000000000000003", "000000000000000f", "ffffffffffffffff"]
    np.testing.assert_array_equal(near_duplicate_groups(hashes, 2), [0, 0, 0, 1])
    np.testing.assert_array_equal(near_duplicate_groups(hashes, 0), [0, 1, 2, 3])
