"""Reading a VAE's config and a few tensors of its weights without loading (or downloading) the
rest, and without torch: the driver needs the normalisation stats, never the model."""

from __future__ import annotations

import json
import os
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


def _jsonable(value: Any) -> Any:
    if hasattr(value, "flatten"):  # a numpy array (safetensors_tensors)
        return [float(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return float(value)


_NORMALIZATION_KEYS = ("latents_mean", "latents_std", "scaling_factor", "shift_factor")


def subfolder_config(root: str, subfolder: str) -> dict[str, Any]:
    """<subfolder>/config.json of a model folder or Hub repo, as a diffusers class's `load_config`
    reads it, without importing diffusers (seconds of the driver's start-up, before any row moves)."""
    if os.path.isdir(root):
        path = os.path.join(root, subfolder, "config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(root, "config.json", subfolder=subfolder)
    with open(path) as f:
        return json.load(f)


def subfolder_tensors(root: str, subfolder: str, keys: list[str]) -> dict[str, list[float]]:
    """The named tensors of <subfolder>/*.safetensors, flattened to floats (a Hub repo through
    HfFileSystem's range requests): per-channel stats that a class keeps as weight buffers."""
    if os.path.isdir(root):
        import fsspec

        fs, folder = fsspec.filesystem("file"), os.path.join(root, subfolder)
    else:
        from huggingface_hub import HfFileSystem

        fs, folder = HfFileSystem(), f"{root}/{subfolder}"
    out: dict[str, list[float]] = {}
    for path in sorted(fs.glob(f"{folder}/*.safetensors")):
        found = safetensors_tensors(fs, path, [k for k in keys if k not in out])
        out.update({k: _jsonable(v) for k, v in found.items()})
    return out


def normalization_stats(root: str) -> dict:
    """The normalisation stats of the VAE in a model folder or Hub repo, JSON-serialisable, for
    the latent files' metadata.

    Read without building the model or downloading its weights, so the driver of a cluster run
    stays light: from the VAE's config where the class keeps them there (Wan, CogVideoX,
    Hunyuan), and for the LTX VAEs, which keep per-channel `latents_mean` / `latents_std` as
    weight buffers, those two tensors alone, read as byte ranges of the safetensors files
    (`safetensors_tensors`; a Hub repo through HfFileSystem's range requests). Keys with no
    value are left out."""
    config = subfolder_config(root, "vae")
    out: dict[str, Any] = {k: _jsonable(config[k]) for k in _NORMALIZATION_KEYS if config.get(k) is not None}
    missing = [k for k in ("latents_mean", "latents_std") if k not in out]
    if missing:
        out.update(subfolder_tensors(root, "vae", missing))
    return out
