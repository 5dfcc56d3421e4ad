"""``conf/base/parameters_data_ingestion.yml``: where the images come from and how they are
checked and split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from chest_ct_classifier.config.base import Settings

SplitName = Literal["train", "valid", "test"]


class SplitSettings(Settings):
    """``official`` keeps the archive's train/valid/test folders, ``resplit`` ignores them and
    splits anew, ``auto`` re-splits only data that has no split. A re-split keeps every
    near-duplicate group whole in one split and follows ``ratios`` class by class."""

    mode: Literal["auto", "official", "resplit"]
    ratios: dict[SplitName, float]
    seed: int

    @field_validator("ratios")
    @classmethod
    def _some_share(cls, ratios: dict[str, float]) -> dict[str, float]:
        if any(share < 0 for share in ratios.values()) or sum(ratios.values()) <= 0:
            raise ValueError("shares must be non-negative and not all zero")
        return ratios


class DataIngestionParameters(Settings):
    source: str = Field(min_length=1)
    """A folder, a .zip, an http(s) URL to a .zip, or kaggle://owner/dataset."""
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$")
    """The sha256 the source archive must have (checked when set)."""
    near_duplicate_max_distance: int = Field(ge=0, le=64)
    """Largest Hamming distance between two 64-bit perceptual hashes of near duplicates."""
    split: SplitSettings

    @field_validator("sha256", mode="before")
    @classmethod
    def _empty_is_unset(cls, sha256: object) -> object:
        return None if sha256 == "" else sha256
