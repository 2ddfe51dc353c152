"""Reading a few tensors of a weights file without loading (or downloading) the rest."""

from __future__ import annotations

import json
import struct
from typing import Any

import torch

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def safetensors_tensors(fs: Any, path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of one safetensors file, reading only its header and their bytes (the
    format: an 8-byte little-endian header length, a JSON header of dtype, shape and
    data_offsets per tensor, then the data); a GB-sized weights file costs a few KB."""
    out: dict[str, torch.Tensor] = {}
    with fs.open(path, "rb", block_size=1 << 16) as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for key in keys:
            info = header.get(key)
            if info is None or info["dtype"] not in _SAFETENSORS_DTYPES:
                continue
            begin, end = info["data_offsets"]
            f.seek(8 + size + begin)
            raw = bytearray(f.read(end - begin))
            out[key] = torch.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out
