"""The `reference_latents/` part of the ltx2 layout (docs/exporters.md): IC-LoRA references.

LTX-2's process_dataset.py writes a target's reference latent to
`.precomputed/reference_latents/<name>.pt`, `<name>` being the *target's* name (its
`main_media_column`), in the `latents/` form: {"latents": [128, F', H', W'] normalised,
"num_frames", "height", "width", "fps" = the target's fps / temporal scale factor}. The trainer
reads it through `PrecomputedDataset` as the source `reference_latents` (video_to_video strategy:
`ref_latents`; flexible strategy: a `reference` condition's `latents_dir`) and infers the spatial
and temporal scale factors from the two files' sizes."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from latentforge.formats.export.base import ExportError
from latentforge.formats.tensors import from_columns
from latentforge.rows import has_value

REFERENCE_LATENTS_DIR = "reference_latents"


def has_reference(latent: Mapping[str, Any]) -> bool:
    return has_value(latent.get("reference_latent_bytes"))


def reference_file(latent: Mapping[str, Any], mean: torch.Tensor, std: torch.Tensor, store_dtype: torch.dtype) -> dict[str, Any]:
    """The reference latent of one sample, normalised as its target's (same VAE, same stats)."""
    ref = from_columns(latent, "reference_latent")
    if ref.ndim != 4 or ref.shape[0] != mean.shape[0]:
        raise ExportError(f"{latent.get('sample_id')}: reference latent {tuple(ref.shape)} is not [{mean.shape[0]}, F', H', W']")
    normalised = ((ref.float() - mean) / std).to(store_dtype).contiguous()
    fps = float(latent.get("reference_fps") or latent.get("fps") or 0.0)
    _, f, h, w = normalised.shape
    return {"latents": normalised, "num_frames": f, "height": h, "width": w, "fps": fps if fps > 0 else 1.0}
