"""Where a model's weights go when it loads: one GPU, several, or quantised (bitsandbytes).

Ray gives an actor `num_gpus` GPUs by setting CUDA_VISIBLE_DEVICES, so the GPUs a model may use
are the ones CUDA sees in its process. A model loads straight onto its device (`device_map`),
never as a full copy in CPU memory first.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def device_map_for(device: str | torch.device) -> str | None:
    """from_pretrained's `device_map`: None on the CPU; the one GPU; or, when the actor was given
    several (num_gpus > 1), "auto": accelerate spreads the layers over every visible GPU and
    moves activations between them, so a model larger than one GPU loads."""
    import torch

    if torch.device(device).type == "cpu":
        return None
    return "auto" if torch.cuda.device_count() > 1 else str(device)


def quantization_config(bits: int | None, compute_dtype: torch.dtype, setting: str) -> Any:
    """A BitsAndBytesConfig for 8-bit or 4-bit (NF4) weights, or None for full weights; a clear
    error naming the config key (`setting`) where it cannot work: no CUDA, no bitsandbytes."""
    if not bits:
        return None
    if bits not in (8, 4):
        raise ValueError(f"{setting}: {bits}-bit weights are not supported (8 or 4)")
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{setting}: bitsandbytes quantization needs a CUDA GPU and none is visible to this actor; "
            "turn it off on CPU-only machines (or run on GPU workers)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:  # transformers imports it when loading
        raise RuntimeError(f"{setting}: the bitsandbytes package is not installed (pip install 'latentforge[quant]')")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def load_kwargs(device: str | torch.device, dtype: torch.dtype, bits: int | None = None, setting: str = "") -> dict[str, Any]:
    """from_pretrained's placement arguments for a transformers model: dtype, device_map and,
    with `bits`, the quantisation config (quantised weights are placed by bitsandbytes)."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    quant = quantization_config(bits, dtype, setting)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map_for(device) or str(device)
    elif device_map_for(device) is not None:
        kwargs["device_map"] = device_map_for(device)
    return kwargs


def needs_move(kwargs: dict[str, Any]) -> bool:
    """Whether a loaded model still has to be moved with `.to(device)`: not when accelerate or
    bitsandbytes placed it (a device_map), where `.to` would undo the spread or fail."""
    return "device_map" not in kwargs
