"""The base of every config model: frozen, and an unknown key is an error that names it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Frozen config whose unknown keys fail validation with the key's name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
