"""Reading a few tensors of a weights file without loading (or downloading) the rest."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def safetensors_tensors(fs: Any, path: str, keys: list[str]) -> dict[str, np.ndarray]:
    """The named tensors of one safetensors file as float numpy arrays, reading only its header
    and their bytes (the format: an 8-byte little-endian header length, a JSON header of dtype,
    shape and data_offsets per tensor, then the data); a GB-sized weights file costs a few KB.
    No torch: the driver reads the VAE's normalisation stats with this. bfloat16 values become
    the float32 values they are (their bits are a float32's upper half)."""
    out: dict[str, np.ndarray] = {}
    with fs.open(path, "rb", block_size=1 << 16) as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for key in keys:
            info = header.get(key)
            if info is None or info["dtype"] not in _SAFETENSORS_DTYPES:
                continue
            begin, end = info["data_offsets"]
            f.seek(8 + size + begin)
            values = np.frombuffer(f.read(end - begin), dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            if info["dtype"] == "BF16":
                values = (values.astype("<u4") << 16).view("<f4")
            out[key] = values.reshape(info["shape"]).copy()
    return out
