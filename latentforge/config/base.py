"""What every config section shares: the error type and pydantic's strictness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

DTYPE = Literal["bfloat16", "float16", "float32"]


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
