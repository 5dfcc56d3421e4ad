"""DICOM files made from the bundled sample's PNGs, for the tests of every path that reads them.

A sample PNG becomes a CT slice whose Hounsfield units map back to the PNG's grey levels under
the lung window (HU = -1350 + value x 1500 / 255), stored with a chosen rescale slope and
intercept, signed or unsigned, in a chosen encoding, with marker values in every field that
names a person: no output of any path may contain them.
"""

from __future__ import annotations

import io

import numpy as np

from chest_ct_classifier.images.dicom import lung_window_values
from chest_ct_classifier.images.preprocessing import decode_image

PATIENT_MARKERS = {
    "PatientName": "Zzmarker^Patientname",
    "PatientID": "ZZMARKER-PID-4711",
    "PatientBirthDate": "19010203",
    "PatientAddress": "ZZMARKER 12 Street Of Privacy",
    "ReferringPhysicianName": "Zzmarker^Physician",
    "AccessionNumber": "ZZACC98765",
    "OtherPatientIDs": "ZZMARKER-OTHER-ID",
}
"""Marker values, each findable by a text search of any output."""

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
ENCODINGS = ("explicit", "implicit", "rle", "jpeg2000")


def grey_pixels(png: bytes) -> np.ndarray:
    """The image's grey levels (uint8, H x W) as the project decodes it (transparency on black,
    16-bit rescaled): what the lung window must give back."""
    return np.asarray(decode_image(png).convert("L"))


def ct_dicom(
    png: bytes,
    encoding: str = "explicit",
    slope: float = 1.0,
    intercept: float = 0.0,
    unsigned: bool = False,
    instance: int = 1,
    series_uid: str = SERIES_UID,
    modality: str = "CT",
    frames: int = 1,
    preamble: bool = True,
) -> bytes:
    """A DICOM file of ``png`` (its grey levels) as described in the module docstring."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        RLELossless,
        generate_uid,
    )

    hounsfield = lung_window_values(grey_pixels(png))
    stored = np.round((hounsfield - intercept) / slope)
    dtype = np.uint16 if unsigned else np.int16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("the slope and intercept do not fit these values in 16 bits")
    stored = stored.astype(dtype)
    if frames > 1:
        stored = np.repeat(stored[None], frames, axis=0)

    ds = Dataset()
    sop_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if encoding == "implicit" else ExplicitVRLittleEndian
    )
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
    ds.Modality, ds.InstanceNumber = modality, instance
    for keyword, value in PATIENT_MARKERS.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0 if unsigned else 1
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.WindowCenter, ds.WindowWidth = "40", "400"  # the file's own choice: mediastinum
    ds.PixelData = stored.tobytes()
    if encoding == "rle":
        ds.compress(RLELossless)
    elif encoding == "jpeg2000":
        ds.compress(JPEG2000Lossless)
    elif encoding not in ("explicit", "implicit"):
        raise ValueError(f"unknown encoding {encoding!r}")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble, implicit_vr=encoding == "implicit",
               little_endian=True)  # fmt: skip
    return buffer.getvalue()
