"""Portable tensor columns: `<name>_bytes`, `<name>_shape`, `<name>_dtype`.

Stored as raw little-endian bytes so pyarrow, pandas or DuckDB can read a shard without
latentforge or torch (DESIGN.md, Outputs). bfloat16 has no numpy dtype: its bytes are the
upper halves of float32 values, which `from_columns` rebuilds through torch.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TORCH_TO_NAME = {v: k for k, v in DTYPES.items()}


def to_columns(name: str, tensor: torch.Tensor, dtype: str | None = None) -> dict[str, Any]:
    """One tensor -> the three columns that hold it."""
    t = tensor.detach()
    if dtype is not None:
        t = t.to(DTYPES[dtype])
    dtype_name = TORCH_TO_NAME[t.dtype]
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


def from_columns(row: Mapping[str, Any], name: str) -> torch.Tensor:
    """The three columns of `name` in a stored row -> a torch tensor."""
    raw = row[f"{name}_bytes"]
    shape = [int(s) for s in row[f"{name}_shape"]]
    dtype_name = row[f"{name}_dtype"]
    if dtype_name == "bfloat16":
        ints = np.frombuffer(raw, dtype="<i2").reshape(shape).copy()
        return torch.from_numpy(ints).view(torch.bfloat16)
    np_dtype = np.dtype(dtype_name).newbyteorder("<")
    return torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(dtype_name))
