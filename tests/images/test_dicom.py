"""DICOM to the model's image: recognised by content, the modality LUT, the window, every
encoding; clear errors for files that give no image; no patient data in any message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from chest_ct_classifier.images.dicom import (
    DicomError,
    DicomTooLargeError,
    is_dicom,
    modality_problem,
    read_dicom,
    validate_window,
)
from chest_ct_classifier.images.preprocessing import (
    UnreadableImageError,
    decode_image,
    prepare_images,
    preprocess_image_bytes,
)
from tests.dicom_files import ENCODINGS, PATIENT_MARKERS, ct_dicom, grey_pixels

SIZE = 64


def _testdata(name: str) -> bytes:
    return Path(get_testdata_file(name, download=False)).read_bytes()


@pytest.fixture(scope="module")
def png(sample_images) -> bytes:
    return sample_images["Data/test/normal/6 (2).png"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "stored",
    [{}, {"slope": 0.5, "intercept": -2000, "unsigned": True},
     {"intercept": -1500, "unsigned": True}, {"slope": 2.0, "intercept": -100}],
    ids=["signed", "slope_0.5_unsigned", "unsigned", "slope_2"],
)  # fmt: skip
def test_a_ct_slice_under_the_lung_window_is_the_png_it_was_made_from(png, encoding, stored):
    data = ct_dicom(png, encoding, **stored)
    assert is_dicom(data)
    (slice_,) = read_dicom(data)
    tolerance = 1 if stored.get("slope", 1.0) > 1 else 0  # a coarser step rounds once more
    assert np.abs(slice_.pixels.astype(int) - grey_pixels(png)).max() <= tolerance
    assert slice_.window == (-600.0, 1500.0) and slice_.modality == "CT"
    model_input = preprocess_image_bytes(data, SIZE)
    np.testing.assert_allclose(model_input, preprocess_image_bytes(png, SIZE), atol=tolerance * 3)


def test_dicom_is_recognised_by_content_not_by_name(png):
    assert is_dicom(ct_dicom(png)) and is_dicom(ct_dicom(png, preamble=False))
    assert not is_dicom(png) and not is_dicom(b"plain text " * 20) and not is_dicom(b"")
    without_preamble = ct_dicom(png, "implicit", preamble=False)
    assert without_preamble[128:132] != b"DICM"
    np.testing.assert_array_equal(
        np.asarray(decode_image(without_preamble)), np.asarray(decode_image(ct_dicom(png)))
    )


def test_windows(png):
    data = ct_dicom(png)
    (lung,) = read_dicom(data, "lung")
    (mediastinum,) = read_dicom(data, "mediastinum")
    (own,) = read_dicom(data, "file")  # the file says 40 / 400
    (explicit,) = read_dicom(data, [40, 400])
    assert mediastinum.window == own.window == explicit.window == (40.0, 400.0)
    np.testing.assert_array_equal(mediastinum.pixels, own.pixels)
    assert not np.array_equal(lung.pixels, mediastinum.pixels)
    # no window in the file: `file` falls back to lung
    (no_window,) = read_dicom(_testdata("CT_small.dcm"), "file")
    assert no_window.window == (-600.0, 1500.0)
    for wrong in ("bone", [40], [40, 0]):
        with pytest.raises(ValueError, match="DICOM window"):
            validate_window(wrong)


def test_multi_frame_files_give_one_slice_per_frame(png):
    data = ct_dicom(png, "rle", frames=3, instance=7)
    slices = read_dicom(data)
    assert [s.frame for s in slices] == [0, 1, 2]
    assert {s.instance_number for s in slices} == {7}
    assert len(prepare_images(data, SIZE)) == 3
    with pytest.raises(UnreadableImageError, match="multi-frame"):
        decode_image(data)  # where one slice is expected


@pytest.mark.parametrize(
    ("name", "message"),
    [("rtplan.dcm", "without an image"), ("MR_truncated.dcm", "cannot be decoded"),
     ("JPEG-lossy.dcm", "cannot be decoded")],
)  # fmt: skip
def test_files_that_give_no_image_get_a_clear_error(name, message):
    data = _testdata(name)
    assert is_dicom(data)
    with pytest.raises(DicomError, match=message):
        read_dicom(data)
    with pytest.raises(UnreadableImageError, match=message):
        preprocess_image_bytes(data, SIZE)


def test_other_modalities_are_read_and_named_as_not_ct():
    mr = prepare_images(_testdata("MR_small.dcm"), SIZE)
    assert mr[0].input_problem == "a DICOM image of modality MR, not CT"
    assert modality_problem("CT") is None and modality_problem(None) is None
    colour = prepare_images(_testdata("SC_rgb_rle_2frame.dcm"), SIZE)
    assert len(colour) == 2 and all(image.input_problem for image in colour)
    compressed = {name: read_dicom(_testdata(name))[0].pixels for name in
                  ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                   "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm")}  # fmt: skip
    for name, pixels in compressed.items():  # every lossless encoding: the same slice
        np.testing.assert_array_equal(pixels, compressed["MR_small.dcm"], err_msg=name)


def test_sizes_are_checked_before_decoding(png):
    data = ct_dicom(png)
    rows, columns = grey_pixels(png).shape
    with pytest.raises(DicomTooLargeError, match="more than"):
        read_dicom(data, max_pixels=rows * columns - 1)
    assert read_dicom(data, max_pixels=rows * columns)


def test_patient_data_stays_in_the_file(png):
    text = repr(read_dicom(ct_dicom(png))) + repr(prepare_images(ct_dicom(png), SIZE)[0].source)
    broken = ct_dicom(png)[:2000]  # truncated inside the pixel data
    with pytest.raises(DicomError) as error:
        read_dicom(broken)
    text += str(error.value)
    for marker in PATIENT_MARKERS.values():
        assert marker not in text and marker.split("^")[0] not in text
