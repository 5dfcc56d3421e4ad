import io

import numpy as np
from PIL import Image, ImageDraw

from chest_ct_classifier.images import preprocessing
from chest_ct_classifier.images.body_crop import crop_to_body
from chest_ct_classifier.images.preprocessing import decode_image, image_to_array


def _slice_on_black(size=(400, 300), box=(100, 60, 300, 240)) -> Image.Image:
    """A bright elliptic 'body' with dark 'lungs' inside, on a black field."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    draw.ellipse(box, fill=(170, 170, 170))
    left, top, right, bottom = box
    width = right - left
    draw.ellipse((left + width // 6, top + 30, left + width // 2 - 10, bottom - 30), fill=(15,) * 3)
    draw.ellipse(
        (left + width // 2 + 10, top + 30, right - width // 6, bottom - 30), fill=(15,) * 3
    )
    return image


def test_a_body_on_a_black_field_is_cut_out_with_a_small_margin():
    cropped = crop_to_body(_slice_on_black())
    # The body spans 200 x 180 px; 2 % of that (4 px) is kept on each side.
    assert abs(cropped.size[0] - 208) <= 3 and abs(cropped.size[1] - 188) <= 3


def test_text_and_marks_apart_from_the_body_are_left_out():
    image = _slice_on_black()
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 5, 120, 20), fill=(255, 255, 255))  # a caption above the body
    draw.rectangle((360, 120, 380, 140), fill=(255, 255, 255))  # an "R" marker beside it
    assert crop_to_body(image).size == crop_to_body(_slice_on_black()).size


def test_pictures_without_a_body_sized_content_are_left_as_they_are():
    blank = Image.new("RGB", (300, 200))
    assert crop_to_body(blank) is blank
    dot = Image.new("RGB", (300, 200))
    ImageDraw.Draw(dot).ellipse((140, 90, 160, 110), fill=(255, 255, 255))
    assert crop_to_body(dot) is dot
    full = Image.new("RGB", (300, 200), (200, 200, 200))
    assert crop_to_body(full) is full
    tiny = Image.new("RGB", (5, 5))
    tiny.putpixel((2, 2), (255, 255, 255))
    assert crop_to_body(tiny) is tiny  # one bright pixel is no body


def _difference(first: Image.Image, second: Image.Image) -> float:
    """Mean absolute difference of what the model sees of two pictures, in grey levels."""
    fitted = [image_to_array(image, 224).astype(float) for image in (first, second)]
    return float(np.abs(fitted[0] - fitted[1]).mean())


def test_the_model_sees_a_real_slice_alike_with_or_without_a_black_margin(
    sample_images, monkeypatch
):
    """The point of the crop: a source that leaves a margin around the body gives the model
    nearly the picture of one that cuts tight; without the crop the body would shrink. (Not
    the same picture: the crop keeps a margin of its own, which a picture cut at the skin lacks.)
    """
    cropped, uncropped = [], []
    for data in sample_images.values():
        tight = decode_image(data)
        width, height = tight.size
        padded = Image.new("RGB", (round(width * 1.3), round(height * 1.3)))
        padded.paste(tight, ((padded.size[0] - width) // 2, (padded.size[1] - height) // 2))
        buffer = io.BytesIO()
        padded.save(buffer, format="PNG")
        padded = decode_image(buffer.getvalue())
        cropped.append(_difference(tight, padded))
        with monkeypatch.context() as patched:
            patched.setattr(preprocessing, "crop_to_body", lambda image: image)
            uncropped.append(_difference(tight, padded))
    ratios = np.array(cropped) / np.array(uncropped)
    assert ratios.max() < 0.6, ratios
    assert np.mean(cropped) < np.mean(uncropped) / 3, (np.mean(cropped), np.mean(uncropped))
