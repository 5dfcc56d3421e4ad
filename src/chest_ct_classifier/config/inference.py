"""``conf/base/parameters_inference.yml``: batch prediction (the web app reads it too)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chest_ct_classifier.config.base import Settings

PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
"""auto: the fastest path that passed the precision gate (fp32 when none did)."""


class InferenceParameters(Settings):
    input_path: str = Field(min_length=1)
    """A folder (any depth), a .zip, a URL to a .zip, or a single image."""
    batch_size: int = Field(ge=1)
    precision: Literal["auto", "fp32", "bf16", "int8"]
    uncertain_below: float = Field(gt=0.0, lt=1.0)
    """An answer whose top probability is below this has status ``uncertain``."""
