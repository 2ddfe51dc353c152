"""The row contract's helpers, on the ground floor: every room (formats, operators, sinks,
pipelines) may import this module, and it imports nothing of latentforge.

A row is a plain dict that flows through Ray Data. A failure never kills the job: the stage
returns the row with `error` and `error_stage` set and the sinks write it to `errors/`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import numpy as np


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Deterministic short hex id; the same parts give the same id on every machine and run."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@:]+:[^/\s@]+@", re.I)
_SECRET_PARAM = re.compile(r"([?&](?:x-amz-(?:signature|credential|security-token)|sig|signature|token|key|api_key|access_token|password)=)[^&\s:'\")]+", re.I)


def redact_credentials(text: str) -> str:
    """`text` with the credentials a URL can carry masked: `user:password@` and the signature,
    credential and token parameters of presigned URLs. Error reasons and one-line messages go
    through this before they are written or printed (docs/outputs.md, "Credentials")."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def error_row(row: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    """The row back with `error` and `error_stage` set: a failure never kills the job."""
    out = dict(row)
    out["error"] = redact_credentials(reason)
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


def plain(value: Any, keep_nan: bool = False) -> Any:
    """Undo what a trip through Ray Data's numpy/pandas batches does to a value: numpy scalars
    and arrays become Python values and lists, NaN-for-missing becomes None (unless `keep_nan`,
    for a float column where NaN is a value). Lists, tuples and dicts are converted throughout."""
    if isinstance(value, np.ndarray):
        return [plain(v, keep_nan) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v, keep_nan) for v in value]
    if isinstance(value, dict):
        return {k: plain(v, keep_nan) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value) and not keep_nan:
        return None
    return value


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy batch (column -> array) as plain rows."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: plain(v[i]) for k, v in batch.items()} for i in range(n)]
