"""The LTX-2 trainer's `.precomputed/audio_latents/<name>.pt` (text_to_video with_audio and the
audio strategies' source), from a latent row's `audio_latent_*` columns.

process_videos.py writes {"latents": [C, T, F], "num_time_steps": T, "frequency_bins": F,
"duration": seconds}, where the latents come out of ltx-core's AudioEncoder already normalised:
patchified to [T, C * F], (x - mean-of-means) / std-of-means, unpatchified. We store the raw mean,
so the audio VAE's latents_mean / latents_std (diffusers' names for those buffers, recorded in the
shards' metadata as `audio_vae_normalization`) are applied here. A clip without audio has no file,
as with the trainer (its dataset then leaves that sample out of audio runs).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from latentforge.formats.export.base import ExportError
from latentforge.formats.tensors import from_columns

AUDIO_LATENTS_DIR = "audio_latents"
AUDIO_LATENT_CHANNELS = 8  # process_videos AUDIO_LATENT_CHANNELS
AUDIO_FREQUENCY_BINS = 16  # process_videos AUDIO_FREQUENCY_BINS


def has_audio_latent(latent: Mapping[str, Any]) -> bool:
    return latent.get("audio_latent_bytes") is not None


def audio_latent_file(latent: Mapping[str, Any], metadata: Mapping[str, Any], sample_id: str, dtype: torch.dtype) -> dict[str, Any]:
    raw = from_columns(latent, "audio_latent").float()
    if raw.ndim != 3 or raw.shape[0] != AUDIO_LATENT_CHANNELS or raw.shape[2] != AUDIO_FREQUENCY_BINS:
        raise ExportError(f"{sample_id}: audio latent {tuple(raw.shape)} is not LTX-2's [{AUDIO_LATENT_CHANNELS}, T, {AUDIO_FREQUENCY_BINS}]")
    stats = metadata.get("audio_vae_normalization") or {}
    if "latents_mean" not in stats or "latents_std" not in stats:
        raise ExportError("ltx2 export needs audio_vae_normalization latents_mean/latents_std in the latents metadata for audio latents")
    c, t, f = raw.shape
    mean = torch.tensor(stats["latents_mean"], dtype=torch.float32)
    std = torch.tensor(stats["latents_std"], dtype=torch.float32)
    if mean.numel() != c * f or std.numel() != c * f:
        raise ExportError(f"ltx2 export: audio VAE stats have {mean.numel()} channels, not C * F = {c * f}")
    patched = raw.permute(1, 0, 2).reshape(t, c * f)  # [C, T, F] -> [T, C * F] (channel-major, as ltx-core)
    normalised = ((patched - mean) / std).reshape(t, c, f).permute(1, 0, 2).to(dtype).contiguous()
    duration = latent.get("audio_duration")
    return {"latents": normalised, "num_time_steps": t, "frequency_bins": f, "duration": float(duration if duration is not None else 0.0)}
