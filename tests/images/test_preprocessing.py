import base64
import io

import keras
import numpy as np
import pytest
from PIL import Image

from chest_ct_classifier.images.preprocessing import (
    ImageTooLargeError,
    UnreadableImageError,
    bytes_from_base64,
    decode_image,
    fitted_rgb,
    prepare_image,
    preprocess_image_bytes,
    scale_for_vgg16,
)

SIZE = 48


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def real_rgb(sample_images) -> Image.Image:
    path = next(p for p in sample_images if p.startswith("Data/train/adenocarcinoma"))
    return Image.open(io.BytesIO(sample_images[path])).convert("RGB")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "CMYK"])
def test_every_image_mode_gives_the_same_shaped_float_tensor(real_rgb, mode):
    image = (
        real_rgb.convert("L").convert(mode)
        if mode in ("I;16", "I", "F")
        else real_rgb.convert(mode)
    )
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    tensor = preprocess_image_bytes(_encode(image, fmt), SIZE)
    assert tensor.shape == (SIZE, SIZE, 3)
    assert tensor.dtype == np.float32
    assert np.isfinite(tensor).all()


def test_greyscale_becomes_three_equal_channels(real_rgb):
    rgb = np.asarray(decode_image(_encode(real_rgb.convert("L"))))
    assert rgb.shape[2] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_sixteen_bit_greyscale_is_rescaled_not_clipped():
    ramp = np.linspace(0, 4000, 64 * 64, dtype=np.uint16).reshape(64, 64)
    rgb = np.asarray(decode_image(_encode(Image.fromarray(ramp))))
    assert rgb.min() == 0 and rgb.max() == 255


def test_opaque_rgba_equals_its_rgb(real_rgb):
    from_rgba = preprocess_image_bytes(_encode(real_rgb.convert("RGBA")), SIZE)
    from_rgb = preprocess_image_bytes(_encode(real_rgb), SIZE)
    np.testing.assert_array_equal(from_rgba, from_rgb)


def test_transparent_pixels_are_composited_on_black():
    image = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    assert np.asarray(decode_image(_encode(image))).max() == 0


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_only_the_transparent_part_of_a_partly_transparent_image_turns_black(mode):
    """Opaque pictures skip compositing; one opaque pixel does not make a picture opaque."""
    pixels = np.full((8, 8, 4), 255, np.uint8)
    pixels[4:, :, 3] = 0  # the lower half transparent
    image = Image.fromarray(pixels, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = Image.fromarray(np.where(pixels[..., 3] == 0, 1, 0).astype(np.uint8), "P")
        image.putpalette([255, 255, 255, 255, 255, 255])
        image.info["transparency"] = 1
    decoded = np.asarray(decode_image(_encode(image)))
    assert (decoded[:4] == 255).all() and (decoded[4:] == 0).all()


def test_jpeg_named_png_from_the_archive_is_read(sample_images):
    data = sample_images["Data/train/normal/n7.png"]
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    assert preprocess_image_bytes(data, SIZE).shape == (SIZE, SIZE, 3)


def test_scaling_matches_keras_vgg16_preprocess_input():
    rgb = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    expected = keras.applications.vgg16.preprocess_input(rgb.astype(np.float32))
    np.testing.assert_allclose(scale_for_vgg16(rgb), expected, atol=1e-4)


def test_same_bytes_give_the_same_tensor(sample_images):
    data = next(iter(sample_images.values()))
    np.testing.assert_array_equal(
        preprocess_image_bytes(data, SIZE), preprocess_image_bytes(bytes(data), SIZE)
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "png-signature-only"],
)
def test_unreadable_bytes_raise_a_clear_error(data):
    with pytest.raises(UnreadableImageError) as raised:
        preprocess_image_bytes(data, SIZE)
    assert " at 0x" not in str(raised.value)  # no object address in a message users read


def test_more_pixels_than_allowed_are_refused_from_the_header(real_rgb):
    data = _encode(real_rgb)
    width, height = real_rgb.size
    with pytest.raises(ImageTooLargeError, match=f"{width} x {height}"):
        decode_image(data, max_pixels=width * height - 1)
    assert decode_image(data, max_pixels=width * height).size == (width, height)


def test_fitted_rgb_is_what_the_model_input_is_scaled_from(sample_images):
    data = next(iter(sample_images.values()))
    rgb = fitted_rgb(data, SIZE)
    assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(scale_for_vgg16(rgb), preprocess_image_bytes(data, SIZE))


def test_prepare_image_is_the_model_input_and_the_input_checks_of_one_decode(sample_images):
    data = next(iter(sample_images.values()))
    prepared = prepare_image(data, SIZE)
    np.testing.assert_array_equal(prepared.rgb, fitted_rgb(data, SIZE))
    np.testing.assert_array_equal(prepared.model_input, preprocess_image_bytes(data, SIZE))
    assert prepared.input_problem is None  # a chest CT slice
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 0] = np.arange(64) * 4  # red ramp
    assert "colour" in prepare_image(_encode(Image.fromarray(colour)), SIZE).input_problem
    with pytest.raises(ImageTooLargeError):
        prepare_image(data, SIZE, max_pixels=10)


def test_base64_text_with_line_breaks_or_a_data_prefix_decodes():
    assert bytes_from_base64("aGVs\nbG8=") == b"hello"
    assert bytes_from_base64("data:image/png;base64,aGVsbG8=") == b"hello"
    with pytest.raises(UnreadableImageError, match="base64"):
        bytes_from_base64("%%% not base64")


def test_truncated_real_image_raises(sample_images):
    data = next(iter(sample_images.values()))
    with pytest.raises(UnreadableImageError):
        preprocess_image_bytes(data[: len(data) // 2], SIZE)


def test_aspect_ratio_is_kept_and_the_rest_is_black_background():
    from chest_ct_classifier.images.preprocessing import image_to_array

    wide = Image.new("RGB", (200, 100), (255, 255, 255))
    fitted = image_to_array(wide, 40)
    assert fitted.shape == (40, 40, 3) and fitted.dtype == np.uint8
    rows_with_image = np.flatnonzero(fitted.max(axis=(1, 2)) > 0)
    assert (rows_with_image.min(), rows_with_image.max()) == (10, 29)  # 40 x 20, centred
    assert (fitted[10:30] == 255).all()
    tall = image_to_array(Image.new("RGB", (50, 100), (255, 255, 255)), 40)
    assert np.array_equal(np.flatnonzero(tall.max(axis=(0, 2)) > 0), np.arange(10, 30))


def test_base64_with_whitespace_everywhere_decodes_in_one_pass():
    encoded = base64.b64encode(bytes(range(256)) * 64).decode()
    spaced = " \n".join(encoded)  # whitespace between every character
    assert bytes_from_base64(spaced) == bytes(range(256)) * 64


@pytest.mark.parametrize(
    ("size", "fmt", "mode", "decoded"),
    [
        ((4000, 3000), "PNG", "RGBA", (1334, 1000)),  # reduced by 3 after decoding (rounded up)
        ((4000, 3000), "TIFF", "F", (1334, 1000)),
        ((4096, 2048), "JPEG", "RGB", (1024, 512)),  # decoded at 1/4 scale (JPEG's draft)
        ((2047, 900), "PNG", "RGB", (2047, 900)),  # under twice 1024: whole
        ((1200, 874), "PNG", "L", (1200, 874)),  # the archive's largest: whole
    ],
)
def test_large_images_are_shrunk_while_decoding_to_no_less_than_1024(size, fmt, mode, decoded):
    image = Image.new(mode, size, 90 if mode != "RGBA" else (90, 90, 90, 255))
    assert decode_image(_encode(image, fmt)).size == decoded


def test_shrinking_keeps_the_picture_and_the_exif_orientation():
    # a bright left half, taller than wide once the EXIF orientation (6: rotate 90) is applied
    wide = Image.new("L", (4400, 2200))
    wide.paste(255, (0, 0, 2200, 2200))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    wide.save(out, format="PNG", exif=exif)
    decoded = np.asarray(decode_image(out.getvalue()))
    assert decoded.shape == (1100, 550, 3)  # rotated, then reduced by 4
    assert decoded[:540].mean() > 250 and decoded[560:].mean() < 5  # the bright half on top
