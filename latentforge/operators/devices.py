"""Where model stages run: CUDA when an actor was given a GPU, the CPU otherwise."""

from __future__ import annotations

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> str:
    """bf16 on GPU as the trainers use; float32 on CPU, where bf16 kernels are slow."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"
