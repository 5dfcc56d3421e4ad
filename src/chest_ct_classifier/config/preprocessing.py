"""``conf/base/parameters_preprocessing.yml``: how files become the model's images, for every
path alike (training, evaluation, batch inference, the registered model, the web app)."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat

from chest_ct_classifier.config.base import Settings

NAMED_DICOM_WINDOWS = ("lung", "mediastinum", "file")


class PreprocessingParameters(Settings):
    dicom_window: Literal["lung", "mediastinum", "file"] | tuple[float, PositiveFloat] = "lung"
    """The display window a DICOM slice is seen through (``images.dicom``): ``lung`` (level
    -600, width 1500), ``mediastinum`` (40 / 400), ``file`` (the file's own, else lung), or
    ``[level, width]``."""
