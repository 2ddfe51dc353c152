"""Portable tensor columns: `<name>_bytes`, `<name>_shape`, `<name>_dtype`.

Stored as raw little-endian bytes so pyarrow, pandas or DuckDB can read a shard without
latentforge or torch (DESIGN.md, Outputs). bfloat16 has no numpy dtype: its bytes are the
upper halves of float32 values, which `from_columns` rebuilds through torch.

torch is imported on first use, not with the module: the driver and the CPU workers import the
exporters and sinks that name these functions without ever holding a tensor.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

DTYPE_NAMES = ("bfloat16", "float16", "float32")


@functools.cache
def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {n: getattr(torch, n) for n in DTYPE_NAMES}


def __getattr__(name: str) -> Any:
    """DTYPES (name -> torch dtype) and TORCH_TO_NAME, made when first asked for (PEP 562)."""
    if name == "DTYPES":
        return _torch_dtypes()
    if name == "TORCH_TO_NAME":
        return {v: k for k, v in _torch_dtypes().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_columns(name: str, tensor: Any, dtype: str | None = None) -> dict[str, Any]:
    """One tensor -> the three columns that hold it."""
    import torch

    dtypes = _torch_dtypes()
    t = tensor.detach()
    if dtype is not None:
        t = t.to(dtypes[dtype])
    dtype_name = next(n for n, d in dtypes.items() if d == t.dtype)
    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:
        raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
    else:
        raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
    return {
        f"{name}_bytes": raw,
        f"{name}_shape": [int(s) for s in t.shape],
        f"{name}_dtype": dtype_name,
    }


def from_columns(row: Mapping[str, Any], name: str) -> Any:
    """The three columns of `name` in a stored row -> a torch tensor."""
    import torch

    raw = row[f"{name}_bytes"]
    shape = [int(s) for s in row[f"{name}_shape"]]
    dtype_name = row[f"{name}_dtype"]
    if dtype_name == "bfloat16":
        ints = np.frombuffer(raw, dtype="<i2").reshape(shape).copy()
        return torch.from_numpy(ints).view(torch.bfloat16)
    np_dtype = np.dtype(dtype_name).newbyteorder("<")
    return torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(dtype_name))
