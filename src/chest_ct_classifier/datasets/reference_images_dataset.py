"""Images that are not chest CT slices, from what installed packages ship (scikit-image's sample
data and pydicom's test files, loaded offline) and drawn here (noise, blank images): what the
out-of-distribution measurement shows the detector. Each loads as file bytes (PNG, or the DICOM
file itself), by ``<kind>/<name>``."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from PIL import Image

SYNTHETIC = {
    "noise/grey_uniform": lambda rng: rng.integers(0, 256, (512, 512), dtype=np.uint8),
    "noise/colour_uniform": lambda rng: rng.integers(0, 256, (512, 512, 3), dtype=np.uint8),
    "noise/grey_gaussian": lambda rng: np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(
        np.uint8
    ),
    "flat/black": lambda rng: np.zeros((512, 512), np.uint8),
    "flat/white": lambda rng: np.full((512, 512), 255, np.uint8),
    "flat/grey": lambda rng: np.full((512, 512), 128, np.uint8),
}


class ReferenceImagesDataset(AbstractDataset[None, dict[str, Callable[[], bytes]]]):
    """Read-only. ``images`` maps a kind (``photo``, ``text``, ``microscopy``...) to the names
    of ``skimage.data`` functions; ``dicom`` maps a kind to the names of the test files pydicom
    ships (``MR_small.dcm``); the synthetic noise and blank images are always added."""

    def __init__(
        self,
        images: dict[str, list[str]],
        dicom: dict[str, list[str]] | None = None,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._images = images
        self._dicom = dicom or {}
        self._seed = seed
        self.metadata = metadata

    def load(self) -> dict[str, Callable[[], bytes]]:
        try:
            import skimage.data  # noqa: PLC0415
        except ImportError as exc:
            raise DatasetError("the reference images need scikit-image (uv sync)") from exc
        loaded: dict[str, Callable[[], bytes]] = {}
        for kind, names in self._images.items():
            for name in names:
                loader = getattr(skimage.data, name, None)
                if loader is None:
                    raise DatasetError(f"skimage.data has no image {name!r}")
                loaded[f"{kind}/{name}"] = lambda loader=loader: png_bytes(loader())
        for kind, names in self._dicom.items():
            for name in names:
                loaded[f"{kind}/{name}"] = _dicom_test_file(name)
        rng = np.random.default_rng(self._seed)
        for key, draw in SYNTHETIC.items():
            pixels = draw(rng)
            loaded[key] = lambda pixels=pixels: png_bytes(pixels)
        return loaded

    def save(self, data: None) -> None:
        raise DatasetError("reference images are read, never written")

    def _describe(self) -> dict[str, Any]:
        return {"images": self._images, "dicom": self._dicom, "seed": self._seed}


def _dicom_test_file(name: str) -> Callable[[], bytes]:
    from pydicom.data import get_testdata_file  # noqa: PLC0415

    path = get_testdata_file(name, download=False)  # only what the wheel ships: offline
    if path is None:
        raise DatasetError(f"pydicom ships no test file {name!r}")
    return lambda: Path(str(path)).read_bytes()


def png_bytes(pixels: np.ndarray) -> bytes:
    """Pixels (grey or RGB; any dtype, rescaled to 0-255 by their range) as PNG file bytes."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / ((high - low) or 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
