"""What every operator shares: the resources it declares and how it reports a failed row."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Resources:
    """What one instance of a stage needs; the pipeline turns this into Ray Data arguments.

    `num_gpus` is what the stage asks for when CUDA is present; on a machine without CUDA the
    pipeline runs the same actors on CPU.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes of RAM per task or actor, for Ray's scheduler


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Deterministic short hex id; the same parts give the same id on every machine and run."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def error_row(row: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    """The row back with `error` and `error_stage` set: a failure never kills the job."""
    out = dict(row)
    out["error"] = reason
    out["error_stage"] = stage
    return out


def has_value(value: Any) -> bool:
    """False for None, NaN and ''. Ray Data turns an all-None column into NaN floats in numpy batches."""
    if value is None:
        return False
    if isinstance(value, (float, np.floating)):
        return not math.isnan(value)
    return bool(value) if isinstance(value, str) else True


def is_error(row: dict[str, Any]) -> bool:
    return has_value(row.get("error"))


def error_kind(row: dict[str, Any]) -> str:
    """'stage/reason' for counting failures: the message without file name and details."""
    message = str(row.get("error") or "")
    uri = str(row.get("uri") or "")
    if uri and message.startswith(uri):
        message = message[len(uri) :].lstrip(": ")
    for stop in ("(", ":"):
        message = message.split(stop, 1)[0]
    return f"{row.get('error_stage') or 'unknown'}/{message.strip() or 'error'}"


def object_column(values: list[Any]) -> np.ndarray:
    """A 1-D object array holding `values` as they are: np.array would turn equal-length lists
    (tensor shapes) into a 2-D array."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column
