"""``conf/base/parameters_evaluation.yml``: metrics and the precision gate."""

from __future__ import annotations

from pydantic import Field

from chest_ct_classifier.config.base import Settings


class PrecisionGateSettings(Settings):
    """bf16 and int8 are served only if, on valid and on test, they give fp32's answer on every
    image fp32 is decided on (its top probability at least ``decided_margin`` above the second)
    and their accuracy is at most ``max_accuracy_drop`` below fp32's. Near ties may flip."""

    decided_margin: float = Field(ge=0.0, le=1.0)
    max_accuracy_drop: float = Field(ge=0.0, le=1.0)
    batch_size: int = Field(ge=1)
    timing_batch_size: int = Field(ge=1)
    """Speed is measured in batches of this size, and one image alone."""
    timing_repeats: int = Field(ge=1)


class BootstrapSettings(Settings):
    """Percentile bootstrap intervals of the headline metrics (images resampled with
    replacement)."""

    resamples: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1.0)
    seed: int


class SeedSpreadSettings(Settings):
    """The final training repeated with other seeds, to show how much the headline metrics owe
    to chance (the head's initial weights, dropout, the order of the batches)."""

    runs: int = Field(ge=2)
    """Trainings in all: the served model's seed, then the next ``runs - 1`` integers."""


class EvaluationParameters(Settings):
    batch_size: int = Field(ge=1)
    calibration_bins: int = Field(ge=1)
    """Equal-width confidence bins of the expected calibration error (ECE)."""
    bootstrap: BootstrapSettings
    precision_gate: PrecisionGateSettings
    seed_spread: SeedSpreadSettings
