"""``conf/base/parameters_training.yml``: the activation cache, the two training phases, the
choice of their epochs and calibration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chest_ct_classifier.config.base import Settings


class AugmentationSettings(Settings):
    """Augmented views per train/valid image, computed once and cached; each range is the
    largest change in either direction."""

    views: int = Field(ge=0)
    horizontal_flip: bool
    rotation_degrees: float = Field(ge=0.0, le=180.0)
    zoom: float = Field(ge=0.0, lt=1.0)
    """Fraction, in and out."""
    stretch: float = Field(ge=0.0, lt=1.0)
    """Width against height."""
    brightness: float = Field(ge=0.0, le=1.0)
    """Fraction of the 0-255 range."""
    contrast: float = Field(ge=0.0, le=1.0)


class SelectionSettings(Settings):
    """The share of train+valid held out, by whole near-duplicate groups, to choose epochs."""

    holdout_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int


class CalibrationSettings(Settings):
    fit_on: Literal["none", "holdout", "valid"]
    """none: no temperature (T = 1), the model's own probabilities; holdout: a temperature
    fitted to the schedule run's answers on its grouped hold-out; valid: to the refit model's
    answers on valid's images that have no copy in train. Never test."""


class EarlyStoppingSettings(Settings):
    monitor: Literal["loss", "macro_f1"]
    """The hold-out score that decides when a phase stops and which epoch it keeps."""


class PhaseSettings(Settings):
    max_epochs: int = Field(ge=0)
    """0 skips the phase."""
    patience: int = Field(ge=1)
    """Epochs without improvement before the phase stops."""
    learning_rate: float = Field(gt=0.0)


class OutOfDistributionSettings(Settings):
    target_false_rejection: float = Field(gt=0.0, lt=0.5)
    """Share of held-out chest CT slices the detector may flag: it sets the threshold."""


class TrainingParameters(Settings):
    distribute: Literal["none", "mirrored"] = "none"
    """mirrored: train on every GPU of the machine (MirroredStrategy; logical CPU devices when
    there is none)."""
    activation_batch_size: int = Field(ge=1)
    """Images per forward pass of the frozen layers."""
    batch_size: int = Field(ge=1)
    seed: int
    heads: int = Field(ge=1)
    """Heads trained with different seeds on the same base and merged into one (their logits
    averaged): 1 for a single head."""
    class_weights: Literal["balanced", "none"]
    """balanced weighs every class equally."""
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    """Share of each training target spread evenly over the classes (0: the labels as they
    are)."""
    augmentation: AugmentationSettings
    selection: SelectionSettings
    calibration: CalibrationSettings
    early_stopping: EarlyStoppingSettings
    phase1: PhaseSettings
    """The head alone, on its cached input vector of every view."""
    phase2: PhaseSettings
    """Block 5 and the head, one random view per image and epoch."""
    ood: OutOfDistributionSettings
