"""The base of every settings model: unknown keys are errors, values never change after
validation, and numbers are not silently truncated (3.5 is not an integer)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """A block of parameters: each field is a key of the YAML file, with its type and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
